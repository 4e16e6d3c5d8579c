/// Percent-encoding for names placed in request paths, so that a volume
/// named `a/b` or `x?y` addresses that volume and not some other route.
enum PathComponent {
    /// Encodes every byte outside RFC 3986's unreserved set
    /// (`A-Z a-z 0-9 - . _ ~`). The names `.` and `..` are encoded entirely,
    /// since a server or proxy could otherwise treat them as path navigation.
    static func encode(_ name: String) -> String {
        if name == "." || name == ".." {
            return String(repeating: "%2E", count: name.count)
        }
        return percentEncoded(name)
    }

    /// `text` with every byte outside the unreserved set written as `%XX`.
    /// What is left cannot end a path segment or a query parameter.
    ///
    /// - Parameter allowed: Further ASCII characters to keep as they are,
    ///   where the caller knows they are safe (`/` in a path, `+` in an NBD
    ///   export name).
    static func percentEncoded(_ text: String, allowing allowed: Set<UInt8> = []) -> String {
        var encoded = ""
        for byte in text.utf8 {
            if isUnreserved(byte) || allowed.contains(byte) {
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                encoded += "%" + hexDigits[Int(byte >> 4)] + hexDigits[Int(byte & 0x0F)]
            }
        }
        return encoded
    }

    private static let hexDigits = "0123456789ABCDEF".map(String.init)

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            true
        default:
            false
        }
    }
}
