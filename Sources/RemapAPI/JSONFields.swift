import RemapWire

extension JSONValue {
    /// Parses a request body that must be a JSON object (strictly: see
    /// `JSONParser`).
    static func object(from body: [UInt8]) throws(Problem) -> [String: JSONValue] {
        let value: JSONValue
        do {
            value = try JSONParser.parse(body)
        } catch {
            throw .invalidArgument("request body is not valid JSON: \(error.description)")
        }
        guard case .object(let object) = value else { throw .invalidArgument("request body must be a JSON object") }
        return object
    }
}

/// Reads the fields of a JSON object body, rejecting unknown ones.
struct JSONFields {
    let object: [String: JSONValue]
    /// Put before field names in messages (`suppliers[0].`).
    let prefix: String

    init(_ object: [String: JSONValue], allowed: Set<String>, prefix: String = "") throws(Problem) {
        if let unknown = object.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw .invalidArgument("unknown field '\(prefix)\(unknown)'; allowed: \(allowed.sorted().joined(separator: ", "))")
        }
        self.object = object
        self.prefix = prefix
    }

    func string(_ key: String) throws(Problem) -> String {
        guard let value = try optionalString(key) else { throw .invalidArgument("field '\(prefix)\(key)' is required") }
        return value
    }

    func optionalString(_ key: String) throws(Problem) -> String? {
        switch object[key] {
        case nil: return nil
        case .string(let value): return value
        case let other?: throw .invalidArgument("field '\(prefix)\(key)' must be a string, got \(other.typeName)")
        }
    }

    /// A file or device path: C calls would cut it at a NUL.
    func path(_ key: String) throws(Problem) -> String {
        let value = try string(key)
        try Self.refuseNUL(value, "field '\(prefix)\(key)'")
        return value
    }

    func boolean(_ key: String) throws(Problem) -> Bool? {
        switch object[key] {
        case nil: return nil
        case .bool(let value): return value
        case let other?: throw .invalidArgument("field '\(prefix)\(key)' must be true or false, got \(other.typeName)")
        }
    }

    func positiveInteger(_ key: String) throws(Problem) -> UInt64 {
        switch object[key] {
        case nil: throw .invalidArgument("field '\(prefix)\(key)' is required")
        case .integer(let value):
            guard value > 0 else { throw .invalidArgument("field '\(prefix)\(key)' must be greater than 0, got \(value)") }
            return UInt64(value)
        case let other?:
            throw .invalidArgument("field '\(prefix)\(key)' must be an integer number of bytes, got \(other.typeName)")
        }
    }

    func nonNegativeInteger(_ key: String) throws(Problem) -> UInt64? {
        switch object[key] {
        case nil: return nil
        case .integer(let value):
            guard value >= 0 else { throw .invalidArgument("field '\(prefix)\(key)' must not be negative, got \(value)") }
            return UInt64(value)
        case let other?:
            throw .invalidArgument("field '\(prefix)\(key)' must be an integer number of bytes, got \(other.typeName)")
        }
    }

    /// An object of string values.
    func labels(_ key: String) throws(Problem) -> [String: String]? {
        switch object[key] {
        case nil: return nil
        case .object(let entries):
            var labels: [String: String] = [:]
            for (name, value) in entries {
                guard case .string(let text) = value else {
                    throw .invalidArgument("label '\(name)' must have a string value, got \(value.typeName)")
                }
                try Self.refuseNUL(name, "a label key")
                try Self.refuseNUL(text, "label '\(name)'")
                labels[name] = text
            }
            return labels
        case let other?: throw .invalidArgument("field '\(prefix)\(key)' must be an object of strings, got \(other.typeName)")
        }
    }

    private static func refuseNUL(_ text: String, _ what: String) throws(Problem) {
        guard text.utf8.contains(0) else { return }
        throw .invalidArgument("\(what) must not contain a NUL character (\\u0000)")
    }
}
