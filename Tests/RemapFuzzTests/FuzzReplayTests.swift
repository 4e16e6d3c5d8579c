import Foundation
import RemapFuzz
import Testing

/// Every committed fuzz input, the seed corpus and the regressions (inputs
/// that once crashed or hung remapd, see Tests/Fuzz/regressions/README.md),
/// runs through its target in the normal build: a crash ends the test
/// process, a hang traps after NBDFuzzing.hangSeconds.
@Suite struct FuzzReplayTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz").path

    @Test(arguments: FuzzTarget.allCases)
    func committed_inputs_replay_without_a_crash_or_hang(_ target: FuzzTarget) {
        let directories = ["corpus", "regressions"].map { "\(Self.fuzzDirectory)/\($0)/\(target.rawValue)" }
        let count = target.replay(directories.filter { FileManager.default.fileExists(atPath: $0) })
        #expect(count > 0, "no corpus for \(target.rawValue) under \(Self.fuzzDirectory)")
    }
}
