import RemapWire
import Testing

/// The one size grammar of remapd's flags and remapctl's options.
@Suite struct ByteSizeTests {
    @Test(arguments: [
        ("1073741824", 1 << 30), ("512M", 512 << 20), ("1.5G", 3 << 29), ("4GiB", 4 << 30), ("64 KiB", 64 << 10),
        ("1t", 1 << 40), ("2 g", 2 << 30), (" 7 ", 7), ("1GB", 1 << 30), ("0.5k", 512), (".5K", 512),
        ("1.25M", 1_310_720), ("3b", 3), ("8P", 8 << 50), ("9223372036854775807", Int.max),
    ] as [(String, Int)])
    func parses(text: String, bytes: Int) throws {
        #expect(try ByteSize(parsing: text).bytes == bytes)
    }

    @Test(arguments: [
        ("", ByteSize.ParseError.empty), ("  ", .empty), ("G", .notANumber), ("1.5.G", .notANumber), (".", .notANumber),
        ("12X", .unknownUnit("X")), ("4 gigs", .unknownUnit("gigs")), ("1G2", .notANumber), ("-1", .notPositive),
        ("0", .notPositive), ("0.0M", .notPositive), ("1.0000001K", .notWholeBytes), ("0.3", .notWholeBytes),
        ("9223372036854775808", .tooLarge), ("8192P", .tooLarge), ("99999999999999999999999999999999999999999", .tooLarge),
    ] as [(String, ByteSize.ParseError)])
    func refuses(text: String, error: ByteSize.ParseError) {
        #expect(throws: error) { try ByteSize(parsing: text) }
    }

    @Test func zero_where_allowed() throws {
        #expect(try ByteSize(parsing: "0", allowingZero: true).bytes == 0)
        #expect(try ByteSize(parsing: "0K", allowingZero: true).bytes == 0)
    }

    /// `ls -h`: one decimal below ten, so that columns line up.
    @Test(arguments: [
        (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (65536, "64 KiB"),
        (4 << 30, "4.0 GiB"), (10 << 20, "10 MiB"), ((1 << 20) - 1, "1.0 MiB"), ((1 << 20) - 300, "1.0 MiB"),
        (-2048, "-2.0 KiB"), (Int.max, "8.0 EiB"),
    ] as [(Int, String)])
    func formats_aligned(bytes: Int, text: String) {
        #expect(ByteSize.format(bytes) == text)
        #expect(ByteSize(bytes: bytes).description == text)
    }

    /// For logs and reports: no `.0`.
    @Test(arguments: [
        (0, "0 B"), (65536, "64 KiB"), (1536, "1.5 KiB"), (4 << 30, "4 GiB"), (12_900 << 20, "12.6 GiB"),
        ((1 << 20) - 1, "1 MiB"), (UInt64.max, "16 EiB"),
    ] as [(UInt64, String)])
    func formats_compact(bytes: UInt64, text: String) {
        #expect(ByteSize.format(bytes, style: .compact) == text)
    }

    /// What one side writes, the other reads back exactly.
    @Test(arguments: [1, 512, 65536, 3 << 29, 1 << 40, 7 << 50])
    func round_trips_whole_units(bytes: Int) throws {
        let text = ByteSize.format(bytes, style: .compact).replacingSpaces()
        #expect(try ByteSize(parsing: text).bytes == bytes)
    }
}

extension String {
    fileprivate func replacingSpaces() -> String { String(filter { $0 != " " }) }
}
