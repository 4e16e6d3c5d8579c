import Foundation

/// The parsers of bytes a client sends, each as a fuzz target: libFuzzer
/// calls `run` with every input it makes (remap-fuzz built by `make fuzz`),
/// and the replay (remap-fuzz otherwise, and the unit tests) with the
/// committed corpus and regression inputs.
///
/// `run` returns when the input was handled as the daemon would handle it;
/// a crash, a broken invariant or a hang traps, which is what libFuzzer
/// records as a finding and what fails a replay.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// One REST request (see `HTTPFuzzing`): routing, percent-decoding,
    /// query parameters, every JSON body decoder, label filters, page
    /// tokens, byte ranges, and sizes.
    case http
    /// The bytes of an NBD connection from its first byte: client flags,
    /// then options (see `NBDFuzzing`).
    case nbdHandshake = "nbd-handshake"
    /// Requests on an NBD connection already in transmission: a valid
    /// handshake is sent first, chosen by the input's first byte; the
    /// replies are checked (see `NBDConversation`).
    case nbdTransmission = "nbd-transmission"

    public func run(_ input: [UInt8]) {
        switch self {
        case .http: HTTPFuzzing.run(input)
        case .nbdHandshake: NBDFuzzing.shared.exchange(input)
        case .nbdTransmission:
            let conversation = NBDConversation(selector: input.first ?? 0, requests: input.dropFirst())
            NBDFuzzing.shared.exchange(conversation.clientBytes, receive: conversation.receive)
            conversation.finish()
        }
    }
}

extension FuzzTarget {
    /// Runs every input at `paths` (files, or the files of directories,
    /// sorted; READMEs and dot files skipped); returns how many ran.
    public func replay(_ paths: [String]) -> Int {
        var count = 0
        for path in paths {
            for file in Self.inputFiles(path) {
                guard let data = FileManager.default.contents(atPath: file) else { fatalError("cannot read fuzz input \(file)") }
                run(Array(data))
                count += 1
            }
        }
        return count
    }

    private static func inputFiles(_ path: String) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { fatalError("no fuzz input at \(path)") }
        guard isDirectory.boolValue else { return [path] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { !$0.hasPrefix(".") && $0 != "README.md" }.sorted().map { path + "/" + $0 }
    }
}
