import Glibc
import RemapWire

/// A progress line on standard error for a long transfer: bytes done of
/// the total, the percentage and the rate, e.g.
/// `export vm1@s1  12.0 MiB / 64.0 MiB  18%  35.2 MiB/s`.
///
/// On a terminal the line is redrawn in place about ten times a second; on
/// anything else (progress forced with `--progress`) a new line is written
/// about once a second, so that a log keeps a readable history.
struct TransferProgress {
    /// What is being transferred, at the start of the line.
    let label: String
    /// The bytes the transfer will move in all; may change while it runs
    /// (remapd's count for an import).
    var totalBytes: Int
    private let redraws: Bool
    private let startedAt: Double
    private var shownAt: Double?
    private var doneBytes = 0
    /// Whether a line is on the terminal without its newline yet.
    private var lineOpen = false

    /// Whether to show progress: `requested` is `--progress` (true),
    /// `--no-progress` (false) or neither (`nil`: only on a terminal).
    /// `--json` output is for scripts and never gets any.
    static func isWanted(requested: Bool?, json: Bool) -> Bool {
        if json { return false }
        return requested ?? (isatty(STDERR_FILENO) == 1)
    }

    init(label: String, totalBytes: Int) {
        self.label = label
        self.totalBytes = totalBytes
        self.redraws = isatty(STDERR_FILENO) == 1
        self.startedAt = Self.now()
    }

    /// Records that `doneBytes` are done, showing it if the last showing is
    /// old enough.
    mutating func update(doneBytes: Int) {
        self.doneBytes = doneBytes
        let now = Self.now()
        if let shownAt, now - shownAt < (redraws ? 0.1 : 1.0) { return }
        shownAt = now
        show(now: now, final: false)
    }

    /// Shows the final state and ends the line.
    mutating func finish(doneBytes: Int) {
        self.doneBytes = doneBytes
        show(now: Self.now(), final: true)
    }

    /// Ends a redrawn line without a final state, so that an error message
    /// starts on a line of its own.
    mutating func abandon() {
        if lineOpen {
            Output.print(toStandardError: "\n")
            lineOpen = false
        }
    }

    private mutating func show(now: Double, final: Bool) {
        var text = "\(label)  \(ByteSize.format(doneBytes)) / \(ByteSize.format(totalBytes))"
        if totalBytes > 0 {
            text += "  \(min(doneBytes, totalBytes) * 100 / totalBytes)%"
        }
        let elapsed = now - startedAt
        if elapsed > 0, doneBytes > 0 {
            text += "  \(ByteSize.format(Int(Double(doneBytes) / elapsed)))/s"
        }
        if final {
            text += "  in \(Self.duration(elapsed))"
        }
        if redraws {
            // Carriage return, the line, then erase what a longer old line left.
            Output.print(toStandardError: "\r" + text + "\u{1B}[K" + (final ? "\n" : ""))
            lineOpen = !final
        } else {
            Output.print(toStandardError: text + "\n")
        }
    }

    /// `0.4s`, `12.3s`, `2m05s`.
    private static func duration(_ seconds: Double) -> String {
        if seconds < 60 {
            let tenths = Int((seconds * 10).rounded())
            return "\(tenths / 10).\(tenths % 10)s"
        }
        let whole = Int(seconds.rounded())
        let rest = whole % 60
        return "\(whole / 60)m\(rest < 10 ? "0" : "")\(rest)s"
    }

    /// Seconds on the monotonic clock.
    private static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}
