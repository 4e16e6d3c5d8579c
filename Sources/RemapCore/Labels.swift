/// Free-form `key=value` tags on volumes, for orchestrators to find their
/// own (`GET /v1/volumes?label=app=db`).
public enum Labels {
    public static let maximumCount = 64
    public static let maximumKeyLength = 63
    public static let maximumValueLength = 256

    public static func validate(_ labels: [String: String]) throws(RemapError) {
        guard labels.count <= maximumCount else {
            throw .invalidArgument("at most \(maximumCount) labels are allowed, got \(labels.count)")
        }
        for (key, value) in labels {
            guard !key.isEmpty, key.utf8.count <= maximumKeyLength else {
                throw .invalidArgument("label key '\(key)' must be 1 to \(maximumKeyLength) characters")
            }
            for byte in key.utf8 {
                let ok = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
                    || byte == 0x2e || byte == 0x5f || byte == 0x2d || byte == 0x2f
                guard ok else {
                    throw .invalidArgument("label key '\(key)' may only contain letters, digits, '.', '_', '/' and '-'")
                }
            }
            // Stored as SQLite text and passed to C: a NUL would cut it.
            guard !value.utf8.contains(0) else {
                throw .invalidArgument("label '\(key)' must not contain a NUL character")
            }
            // Counted in Unicode code points, as JSON Schema's maxLength does.
            guard value.unicodeScalars.count <= maximumValueLength else {
                throw .invalidArgument("label '\(key)' has a value longer than \(maximumValueLength) characters")
            }
        }
    }
}
