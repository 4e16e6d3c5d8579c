import RemapWire
import Testing

/// What remapctl prints for `--json`: the same document always the same text.
@Suite struct JSONTextTests {
    private let document = JSONValue.object([
        "b": .array([.integer(1), .number(0.25), .null, .bool(true), .object([:]), .array([])]),
        "a": .string("x\"\\\n\t\u{1}\u{7F}é/"),
    ])

    @Test func pretty_printed_with_sorted_keys() {
        #expect(document.prettyPrinted == """
            {
              "a": "x\\"\\\\\\n\\t\\u0001\\u007fé/",
              "b": [
                1,
                0.25,
                null,
                true,
                {},
                []
              ]
            }
            """)
    }

    @Test func compact_on_one_line() {
        #expect(document.compact == #"{"a":"x\"\\\n\t\u0001\u007fé/","b":[1,0.25,null,true,{},[]]}"#)
        #expect(JSONValue.number(.infinity).compact == "null")
    }

    /// The writer's text parses back to the same document.
    @Test func reads_back() throws {
        #expect(try JSONParser.parse(Array(document.prettyPrinted.utf8)) == document)
        #expect(try JSONParser.parse(Array(document.compact.utf8)) == document)
        #expect(JSONValue(parsing: Array("{\"a\": 1,}".utf8)) == nil)
    }
}
