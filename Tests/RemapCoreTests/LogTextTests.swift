import RemapCore
import Testing

@Suite struct LogTextTests {
    @Test(arguments: [
        ("plain text, 'quoted' / path", "plain text, 'quoted' / path"),
        ("x\nremapd: forged", "x\\nremapd: forged"),
        ("a\rb\tc", "a\\rb\\tc"),
        ("nul\u{0}here", "nul\\x00here"),
        ("bell\u{7}esc\u{1b}[2K", "bell\\x07esc\\x1b[2K"),
        ("del\u{7f}c1\u{85}", "del\\x7fc1\\x85"),
        ("back\\slash", "back\\\\slash"),
        ("line\u{2028}para\u{2029}", "line\\u{2028}para\\u{2029}"),
        ("rtl\u{202e}txt.exe\u{2066}", "rtl\\u{202e}txt.exe\\u{2066}"),
        ("snow \u{2603} é", "snow \u{2603} é"),
    ])
    func escapes(text: String, expected: String) {
        #expect(LogText.escaped(text) == expected)
    }

    @Test func escapedTextIsOneLineOfPrintableCharacters() {
        let all = String(String.UnicodeScalarView((0..<0x300).compactMap(Unicode.Scalar.init)))
        let escaped = LogText.escaped(all)
        #expect(!escaped.unicodeScalars.contains { $0.value < 0x20 || (0x7f...0x9f).contains($0.value) })
    }
}
