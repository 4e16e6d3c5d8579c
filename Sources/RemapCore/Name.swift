/// The names of pools, volumes and (later) snapshots. They appear in URLs,
/// NBD export names and file names, so they are kept to a safe alphabet:
/// letters, digits, `.`, `_`, `-`; 1–128 characters; starting with a letter
/// or digit; never `..`. `@` is reserved for `VOLUME@SNAPSHOT` exports.
public enum Name {
    public static let maximumLength = 128

    /// Throws `.invalidArgument` saying exactly what is wrong with `name`.
    public static func validate(_ name: String, kind: String) throws(RemapError) {
        if name.isEmpty { throw .invalidArgument("\(kind) name must not be empty") }
        if name.utf8.count > maximumLength {
            throw .invalidArgument("\(kind) name is longer than \(maximumLength) characters")
        }
        for byte in name.utf8 {
            let ok = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a)
                || (byte >= 0x61 && byte <= 0x7a) || byte == 0x2e || byte == 0x5f || byte == 0x2d
            if !ok {
                throw .invalidArgument(
                    "\(kind) name '\(name)' may only contain letters, digits, '.', '_' and '-'")
            }
        }
        if let first = name.utf8.first, first == 0x2e || first == 0x2d || first == 0x5f {
            throw .invalidArgument("\(kind) name '\(name)' must start with a letter or digit")
        }
        if name.contains("..") { throw .invalidArgument("\(kind) name '\(name)' must not contain '..'") }
    }
}
