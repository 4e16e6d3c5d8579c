import Foundation

/// Any JSON document, kept as a tree so `--json` can print what the daemon
/// sent in a stable form: keys sorted, two-space indentation.
enum JSONValue: Decodable, Equatable, Sendable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Int64.self) {
            self = .integer(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    /// Parses `bytes`, or returns `nil` if they are not JSON.
    init?(parsing bytes: [UInt8]) {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: Data(bytes)) else { return nil }
        self = value
    }

    /// The document as indented text with sorted keys, without a trailing
    /// newline.
    var prettyPrinted: String {
        var output = ""
        write(to: &output, indent: "")
        return output
    }

    /// The document on one line, keys sorted, no spaces: one event per
    /// line for streams.
    var compact: String {
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
