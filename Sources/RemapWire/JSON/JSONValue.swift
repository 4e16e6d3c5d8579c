/// A JSON document as a tree: what ``JSONParser`` reads, so that remapd can
/// check a request body field by field and name every mistake, and what
/// remapctl prints for `--json` in a stable form.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// A number whose value is a whole number that fits `Int64`, however it
    /// was written (`1000`, `1e3`, `1000.0`).
    case integer(Int64)
    /// Any other number.
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Parses `bytes`, or returns `nil` if they are not one JSON document.
    public init?(parsing bytes: [UInt8]) {
        guard let value = try? JSONParser.parse(bytes) else { return nil }
        self = value
    }

    /// The kind of value with its article, for messages: `an integer`.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .integer: return "an integer"
        case .number: return "a fractional number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}
