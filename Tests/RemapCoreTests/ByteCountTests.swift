import RemapCore
import Testing

@Suite struct ByteCountTests {
    @Test(arguments: [
        ("1073741824", UInt64(1 << 30)), ("4G", 4 << 30), ("512M", 512 << 20), ("64KiB", 64 << 10),
        ("1t", 1 << 40), (" 2 g ", 2 << 30), ("2g", 2 << 30), ("7", 7), ("1GB", 1 << 30),
        // remapctl's grammar since RemapWire: fractions that make whole bytes.
        ("1.5G", 3 << 29), ("0", 0),
    ] as [(String, UInt64?)])
    func parses(text: String, expected: UInt64?) {
        #expect(ByteCount.parse(text) == expected)
    }

    @Test(arguments: ["", "G", "-1", "1.5.G", "12X", "99999999999999999999", "16384P", "1.0000001K"])
    func rejects(text: String) {
        #expect(ByteCount.parse(text) == nil)
    }

    @Test func formats() {
        #expect(ByteCount.format(0) == "0 B")
        #expect(ByteCount.format(65536) == "64 KiB")
        #expect(ByteCount.format(1536) == "1.5 KiB")
        #expect(ByteCount.format(4 << 30) == "4 GiB")
    }
}

@Suite struct NameTests {
    @Test(arguments: ["vm1", "a", "db-01.data_x", String(repeating: "x", count: 128)])
    func accepts(name: String) throws {
        try Name.validate(name, kind: "volume")
    }

    @Test(arguments: ["", "a/b", "..", "a..b", ".hidden", "-x", "vol@snap", "sp ace", "é", String(repeating: "x", count: 129)])
    func rejects(name: String) {
        #expect(throws: RemapError.self) { try Name.validate(name, kind: "volume") }
    }
}
