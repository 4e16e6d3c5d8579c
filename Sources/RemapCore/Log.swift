import Glibc
import Synchronization

/// Writes one line to standard error (the journal under systemd). Text a
/// client chose (a name, a path, a label) reaches log lines, so every
/// control character is escaped here, at the one sink: no caller can
/// forget, and no client can start a line of its own.
public func log(_ message: String) {
    let line = Array("remapd: \(LogText.escaped(message))\n".utf8)
    line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
}

/// How log text is made safe to print.
public enum LogText {
    /// `text` on one line: control characters as `\n`, `\r`, `\t` or
    /// `\xNN`, a backslash as `\\` (so an escape in the log is always one
    /// remapd made), and the Unicode line separators and direction
    /// overrides that would break or reorder a line on a terminal as
    /// `\u{NNNN}`.
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var escaped = ""
        for scalar in text.unicodeScalars {
            guard needsEscape(scalar) else {
                escaped.unicodeScalars.append(scalar)
                continue
            }
            switch scalar {
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case "\t": escaped += "\\t"
            case "\\": escaped += "\\\\"
            default:
                let hex = String(scalar.value, radix: 16)
                escaped += scalar.value <= 0xff
                    ? "\\x" + (hex.count == 1 ? "0" + hex : hex)
                    : "\\u{" + hex + "}"
            }
        }
        return escaped
    }

    private static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1f, 0x7f...0x9f: return true  // C0, DEL, C1
        case 0x5c: return true  // backslash
        case 0x2028, 0x2029: return true  // line and paragraph separators
        case 0x202a...0x202e, 0x2066...0x2069: return true  // bidirectional overrides and isolates
        default: return false
        }
    }
}

/// Lets one kind of message through once per interval and counts the
/// rest, so a client repeating itself (or an attack) cannot flood the log.
/// `kind` must be a fixed text (a format string), never a client's.
public final class LogThrottle: Sendable {
    private let interval: Duration
    private let state = Mutex<[String: (last: ContinuousClock.Instant, suppressed: Int)]>([:])

    public init(interval: Duration = .seconds(60)) {
        self.interval = interval
    }

    /// Logs `message` unless a message of `kind` was logged within the
    /// interval; the next one logged says how many were left out.
    public func log(_ kind: String, _ message: @autoclosure () -> String) {
        let now = ContinuousClock.now
        let suppressed: Int? = state.withLock { state in
            if let entry = state[kind], now - entry.last < interval {
                state[kind]?.suppressed += 1
                return nil
            }
            let suppressed = state[kind]?.suppressed ?? 0
            state[kind] = (now, 0)
            return suppressed
        }
        guard let suppressed else { return }
        RemapCore.log(message() + (suppressed > 0 ? " (\(suppressed) more like this since the last such line)" : ""))
    }
}
