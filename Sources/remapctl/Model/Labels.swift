/// The key/value labels a volume carries, e.g. `app=db`, for finding and
/// grouping volumes. On the wire it is a JSON object of strings.
struct Labels: Codable, Equatable, Sendable {
    var values: [String: String]

    init(_ values: [String: String] = [:]) {
        self.values = values
    }

    init(from decoder: any Decoder) throws {
        values = try decoder.singleValueContainer().decode([String: String].self)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(values)
    }

    var isEmpty: Bool { values.isEmpty }

    /// The labels as one table cell, `app=db,tier=web`, sorted by key; `-`
    /// when there are none.
    var summary: String {
        guard !isEmpty else { return "-" }
        return values.keys.sorted().map { "\($0)=\(values[$0, default: ""])" }.joined(separator: ",")
    }

    /// These labels with `assignments` set (replacing values of the same key)
    /// and then the keys in `removals` dropped. Removing a key that is not
    /// there is not an error, so the same command can be run twice.
    func applying(_ assignments: [LabelAssignment], removing removals: [String]) -> Labels {
        var result = values
        for assignment in assignments {
            result[assignment.key] = assignment.value
        }
        for key in removals {
            result[key] = nil
        }
        return Labels(result)
    }

    /// The labels `assignments` set, refusing a key given twice: with
    /// `app=a app=b` one of them would be silently lost.
    init(assignments: [LabelAssignment]) throws(LabelAssignment.ParseError) {
        var result: [String: String] = [:]
        for assignment in assignments {
            guard result.updateValue(assignment.value, forKey: assignment.key) == nil else {
                throw .duplicateKey(assignment.key)
            }
        }
        self.init(result)
    }
}

/// One `key=value` from the command line. The key ends at the first `=`, so
/// values may contain `=`; an empty value (`key=`) is allowed.
///
/// The key's characters and the lengths are left for remapd to check, so
/// that remapctl never disagrees with the daemon about what is valid.
struct LabelAssignment: Equatable, Sendable {
    var key: String
    var value: String

    /// Why a label on the command line was refused.
    enum ParseError: Error, Equatable, CustomStringConvertible {
        case missingEquals(String)
        case emptyKey
        case duplicateKey(String)

        var description: String {
            switch self {
            case .missingEquals(let text): "'\(text)' is not key=value"
            case .emptyKey: "the label key must not be empty"
            case .duplicateKey(let key): "the label '\(key)' is given twice"
            }
        }
    }

    init(parsing text: String) throws(ParseError) {
        guard let equals = text.firstIndex(of: "=") else { throw .missingEquals(text) }
        key = String(text[..<equals])
        value = String(text[text.index(after: equals)...])
        guard !key.isEmpty else { throw .emptyKey }
    }
}
