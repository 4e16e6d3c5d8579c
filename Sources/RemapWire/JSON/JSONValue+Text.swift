/// JSON as text: keys sorted, so that the same document always reads the
/// same, in two forms — indented for people, one line for streams.
extension JSONValue {
    /// The document as indented text with sorted keys, without a trailing
    /// newline.
    public var prettyPrinted: String {
        var output = ""
        write(to: &output, indent: "")
        return output
    }

    /// The document on one line, keys sorted, no spaces: one event per
    /// line for streams.
    public var compact: String {
        var output = ""
        write(to: &output, indent: nil)
        return output
    }

    /// Writes the value; `indent` is `nil` for the compact form.
    private func write(to output: inout String, indent: String?) {
        let inner = indent.map { $0 + "  " }
        let open = indent == nil ? "" : "\n"
        let separator = indent == nil ? "," : ",\n"
        let colon = indent == nil ? ":" : ": "
        switch self {
        case .null:
            output += "null"
        case .bool(let value):
            output += value ? "true" : "false"
        case .integer(let value):
            output += String(value)
        case .number(let value):
            output += value.isFinite ? String(value) : "null"
        case .string(let value):
            output += Self.quoted(value)
        case .array(let elements):
            guard !elements.isEmpty else { output += "[]"; return }
            output += "[" + open
            for (index, element) in elements.enumerated() {
                output += inner ?? ""
                element.write(to: &output, indent: inner)
                output += index == elements.count - 1 ? open : separator
            }
            output += (indent ?? "") + "]"
        case .object(let members):
            guard !members.isEmpty else { output += "{}"; return }
            output += "{" + open
            let keys = members.keys.sorted()
            for (index, key) in keys.enumerated() {
                output += (inner ?? "") + Self.quoted(key) + colon
                members[key, default: .null].write(to: &output, indent: inner)
                output += index == keys.count - 1 ? open : separator
            }
            output += (indent ?? "") + "}"
        }
    }

    private static func quoted(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default:
                result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}
