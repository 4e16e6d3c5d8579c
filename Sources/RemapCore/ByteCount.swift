import RemapWire

/// Byte counts in RemapCore's reports and remapd's log, read and written in
/// the one size grammar of RemapWire's `ByteSize` (`1073741824`, `512M`,
/// `1.5G`, `4GiB`).
public enum ByteCount {
    /// The size `text` names, zero included; `nil` when it is not a size.
    public static func parse(_ text: String) -> UInt64? {
        (try? ByteSize(parsing: text, allowingZero: true)).map { UInt64($0.bytes) }
    }

    /// `67108864` → `64 MiB`, `1536` → `1.5 KiB`, `4294967296` → `4 GiB`.
    public static func format(_ bytes: UInt64) -> String {
        ByteSize.format(bytes, style: .compact)
    }
}

extension String {
    /// Without leading and trailing white space (newlines included).
    public func trimmingWhitespace() -> Substring {
        Substring(trimmed)
    }
}
