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
