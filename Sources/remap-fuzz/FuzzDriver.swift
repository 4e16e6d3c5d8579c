import Foundation
import RemapFuzz

// `remap-fuzz TARGET ...` (or REMAP_FUZZ_TARGET=TARGET remap-fuzz ...).
//
// Built by `make fuzz` (-sanitize=fuzzer,address -DFUZZING) it is a libFuzzer
// binary: libFuzzer's main takes the remaining arguments (corpus
// directories, -max_total_time=, ...) and calls LLVMFuzzerTestOneInput.
// Built normally it replays files and directories of inputs through the
// target, e.g. a crash libFuzzer wrote, in a debugger-friendly build.

/// The target selected; set once, before any input.
private nonisolated(unsafe) var selected: FuzzTarget?

private func selectTarget(_ arguments: inout [String]) -> FuzzTarget {
    let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
    if arguments.count > 1, let target = FuzzTarget(rawValue: arguments[1]) {
        arguments.remove(at: 1)
        // libFuzzer runs children (-merge, -minimize_crash) with the arguments
        // it parsed; they find the target here.
        setenv("REMAP_FUZZ_TARGET", target.rawValue, 1)
        return target
    }
    if let name = ProcessInfo.processInfo.environment["REMAP_FUZZ_TARGET"], let target = FuzzTarget(rawValue: name) {
        return target
    }
    FileHandle.standardError.write(Data("usage: remap-fuzz TARGET [INPUT-FILE-OR-DIRECTORY...]; targets: \(names)\n".utf8))
    exit(2)
}

#if FUZZING
@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    // invariant: libFuzzer passes main's argv, argc strings and a null
    let vector = argv.pointee!
    var arguments = (0..<Int(argc.pointee)).map { String(cString: vector[$0]!) }
    let before = arguments.count
    selected = selectTarget(&arguments)
    if arguments.count < before {
        // Drop the target's name from libFuzzer's view of the arguments.
        for index in 1..<Int(argc.pointee) - 1 { vector[index] = vector[index + 1] }
        argc.pointee -= 1
        vector[Int(argc.pointee)] = nil
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    selected!.run(data.map { Array(UnsafeBufferPointer(start: $0, count: count)) } ?? [])  // invariant: set in LLVMFuzzerInitialize
    return 0
}
#else
@main
enum Replay {
    static func main() {
        var arguments = CommandLine.arguments
        let target = selectTarget(&arguments)
        let count = target.replay(Array(arguments.dropFirst()))
        print("\(target.rawValue): \(count) input(s) replayed, no crash or hang")
        exit(0)  // the engine's threads of the NBD targets never end
    }
}
#endif
