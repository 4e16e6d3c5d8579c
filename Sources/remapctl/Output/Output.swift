import Glibc
import RemapWire

/// Where remapctl's text goes: results to standard output, the one-line
/// error to standard error.
enum Output {
    /// Writes `text` to standard output as is; callers end it with a newline.
    static func print(_ text: String) {
        Swift.print(text, terminator: "")
    }

    /// Pushes what ``print(_:)`` buffered out now, so that a stream's lines
    /// reach a pipe as they happen rather than when a buffer fills.
    static func flush() {
        // nil flushes every output stream; naming `stdout` would touch a
        // C global Swift 6 cannot prove safe.
        fflush(nil)
    }

    /// Prints one object: the response body for `--json`, else its details.
    static func show<Value: Detailed>(_ reply: APIClient.Reply<Value>, json: Bool) {
        if json {
            printJSON(reply.body)
        } else {
            print(reply.value.details)
        }
    }

    /// Prints a response body for `--json`: pretty, keys sorted. A body that
    /// is not JSON is printed as received.
    static func printJSON(_ body: [UInt8]) {
        if let document = JSONValue(parsing: body) {
            print(document.prettyPrinted + "\n")
        } else {
            let text = String(decoding: body, as: UTF8.self)
            print(text.hasSuffix("\n") || text.isEmpty ? text : text + "\n")
        }
    }

    /// Writes `remapctl: <message>` as a single line to standard error.
    static func printError(_ message: String) {
        print(toStandardError: "remapctl: \(message.singleLine)\n")
    }

    /// Writes `text` to standard error as is, unbuffered.
    static func print(toStandardError text: String) {
        let bytes = Array(text.utf8)
        var written = 0
        while written < bytes.count {
            let count = bytes[written...].withUnsafeBytes { raw in
                write(STDERR_FILENO, raw.baseAddress, raw.count)
            }
            if count < 0 && errno == EINTR { continue }
            // Nowhere is left to report a failing standard error to.
            guard count > 0 else { return }
            written += count
        }
    }

    /// A ratio with two decimals and an `x`, e.g. `0.25x` or `3.00x`, as
    /// pools show how far their volumes overcommit them.
    static func ratio(_ value: Double) -> String {
        guard value.isFinite, value >= 0, value < 1e15 else { return "-" }
        let hundredths = Int((value * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)x"
    }

    /// The share `part` is of `whole` as a percentage with one decimal, e.g.
    /// `12.5%`, or `-` when `whole` is zero.
    static func percentage(_ part: Int, of whole: Int) -> String {
        guard whole > 0 else { return "-" }
        let tenths = Int((Double(part) / Double(whole) * 1000).rounded())
        return "\(tenths / 10).\(tenths % 10)%"
    }

    /// A size both ways, e.g. `1.0 GiB (1073741824 bytes)`.
    static func size(_ bytes: Int) -> String {
        "\(ByteSize.format(bytes)) (\(bytes) bytes)"
    }
}

/// What `remapctl … show` prints of an object, one field per line.
protocol Detailed: Sendable {
    var details: String { get }
}
