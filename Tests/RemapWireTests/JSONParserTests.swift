import RemapWire
import Testing

@Suite struct JSONParserTests {
    private func parse(_ text: String) throws(JSONParser.Failure) -> JSONValue {
        try JSONParser.parse(Array(text.utf8))
    }

    @Test func parsesEveryKindOfValue() throws {
        let value = try parse(#" {"a": [1, -2, 1.5, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"], "b": {}} "#)
        #expect(value == .object([
            "a": .array([.integer(1), .integer(-2), .number(1.5), .bool(true), .bool(false), .null,
                         .string("x\"\\/\u{8}\u{c}\n\r\t\u{e9}\u{1F600}")]),
            "b": .object([:]),
        ]))
        #expect(try parse("[]") == .array([]))
        #expect(try parse("\"é\"") == .string("é"))
    }

    /// Integral values are integers however they are written, as
    /// JSONDecoder read them; others are fractional.
    @Test(arguments: [
        ("0", JSONValue.integer(0)), ("-0", .integer(0)), ("1.0", .integer(1)), ("1e3", .integer(1000)),
        ("1.048576e6", .integer(1_048_576)), ("-1.0E+2", .integer(-100)), ("100e-2", .integer(1)),
        ("9223372036854775807", .integer(Int64.max)), ("-9223372036854775808", .integer(Int64.min)),
        ("9223372036854775808", .number(9_223_372_036_854_775_808)), ("1.5", .number(1.5)),
        ("0.1e1", .integer(1)), ("1e-1", .number(0.1)), ("12345678901234567890e-1", .integer(1_234_567_890_123_456_789)),
    ] as [(String, JSONValue)])
    func numbers(text: String, expected: JSONValue) throws {
        #expect(try parse(text) == expected)
    }

    @Test(arguments: [
        (#"{"a": 1,}"#, "trailing comma in an object"),
        (#"[1, 2,]"#, "trailing comma in an array"),
        (#"{"a": 1, "a": 2}"#, "duplicate key 'a'"),
        (#"{"k": {"x": 1, "y": 2, "x": 3}}"#, "duplicate key 'x'"),
        (#"{"\u0061": 1, "a": 2}"#, "duplicate key 'a'"),
        (#"{"a" 1}"#, "expected ':' after a member name"),
        (#"{a: 1}"#, "expected a member name (a string)"),
        (#"{"a": 1}}"#, "unexpected text after the JSON value"),
        (#"[1 2]"#, "expected ',' or ']' in an array"),
        ("01", "a number must not have a leading zero"),
        ("1.", "a number needs digits after '.'"),
        ("1e", "a number needs digits in its exponent"),
        ("-", "a number needs digits"),
        ("+1", "unexpected character"),
        ("NaN", "unexpected character"),
        ("1e400", "a number is out of range"),
        ("tru", "unexpected character"),
        ("\"a\u{1}b\"", "a control character in a string must be escaped"),
        (#""\x""#, "invalid escape in a string"),
        (#""\u12""#, #"a \u escape needs four hexadecimal digits"#),
        (#""\ud800""#, "a high surrogate escape must be followed by a low one"),
        (#""\ud800\u0041""#, "a high surrogate escape must be followed by a low one"),
        (#""\udc00""#, "a low surrogate escape without a high one"),
        ("\"abc", "unterminated string"),
        ("", "unexpected end of input"),
        ("[", "unexpected end of input"),
    ])
    func rejects(text: String, message: String) {
        #expect(throws: JSONParser.Failure.self) { _ = try parse(text) }
        do {
            _ = try parse(text)
        } catch {
            #expect(error.message == message, "\(text)")
        }
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: JSONParser.Failure.self) { _ = try JSONParser.parse([0x22, 0xff, 0x22]) }
    }

    @Test func limitsNesting() throws {
        let deep = String(repeating: "[", count: JSONParser.maximumDepth) + String(repeating: "]", count: JSONParser.maximumDepth)
        _ = try parse(deep)
        let deeper = "[" + deep + "]"
        #expect(throws: JSONParser.Failure.self) { _ = try parse(deeper) }
        // A megabyte of brackets fails cleanly instead of exhausting the stack.
        #expect(throws: JSONParser.Failure.self) { _ = try JSONParser.parse(Array(repeating: UInt8(ascii: "["), count: 1 << 20)) }
    }

    @Test func namesTheOffset() {
        do {
            _ = try parse(#"{"name": "a", "sizeBytes": 1,}"#)
            Issue.record("accepted a trailing comma")
        } catch {
            #expect(error.offset == 29)
            #expect(error.description == "trailing comma in an object at byte 29")
        }
    }
}
