@testable import remapctl
import Testing

/// `text/event-stream` as the HTML standard reads it.
@Suite struct ServerSentEventParserTests {
    private func messages(_ pieces: [String], lastEventID: String? = nil) -> [ServerSentEventParser.Message] {
        var parser = ServerSentEventParser(lastEventID: lastEventID)
        return pieces.flatMap { parser.feed(Array($0.utf8)) }
    }

    @Test func a_blank_line_dispatches_a_message() {
        #expect(messages(["id: 7\nevent: pool.grown\ndata: {\"seq\": 7}\n\n"])
            == [.init(event: "pool.grown", data: "{\"seq\": 7}", lastEventID: "7")])
        #expect(messages(["data: no blank line yet\n"]) == [])
    }

    /// Lines end in CRLF, LF or CR, also when a CRLF is cut between pieces.
    @Test func every_line_ending() {
        let expected = [ServerSentEventParser.Message(event: "message", data: "a", lastEventID: nil),
                        .init(event: "message", data: "b", lastEventID: nil),
                        .init(event: "message", data: "c", lastEventID: nil)]
        #expect(messages(["data: a\r\n\r\ndata: b\n\ndata: c\r\r"]) == expected)
        #expect(messages(["data: a\r", "\n\r", "\ndata: b\n", "\ndata: c\r", "\r"]) == expected)
    }

    @Test func data_lines_join_and_fields_take_one_space_off() {
        #expect(messages(["data:first\ndata:  second\ndata\n\n"])
            == [.init(event: "message", data: "first\n second\n", lastEventID: nil)])
    }

    @Test func comments_and_unknown_fields_are_ignored() {
        #expect(messages([": keep-alive\n\n", "foo: bar\n\n"]) == [])
        #expect(messages([":\ndata: x\nbar\n\n"]).map(\.data) == ["x"])
    }

    @Test func the_last_id_outlives_its_message() {
        let got = messages(["id: 1\ndata: a\n\n", "data: b\n\n", "id: 2\u{0}\ndata: c\n\n"], lastEventID: "0")
        #expect(got.map(\.lastEventID) == ["1", "1", "1"])
        #expect(messages(["data: a\n\n"], lastEventID: "41").map(\.lastEventID) == ["41"])
    }

    @Test func a_byte_order_mark_opens_the_stream_only() {
        #expect(messages(["\u{FEFF}data: a\n\n"]).map(\.data) == ["a"])
        #expect(messages(["data: a\n\n\u{FEFF}data: b\n\n"]).map(\.data) == ["a"])
    }

    @Test func retry_takes_only_digits() {
        var parser = ServerSentEventParser()
        _ = parser.feed(Array("retry: 2500\n\n".utf8))
        #expect(parser.retryMilliseconds == 2500)
        _ = parser.feed(Array("retry: 3s\nretry:\n\n".utf8))
        #expect(parser.retryMilliseconds == 2500)
    }

    @Test func a_long_line_is_cut_not_kept() {
        let line = "data: " + String(repeating: "x", count: ServerSentEventParser.maximumLineBytes + 10) + "\n\n"
        let got = messages([line])
        #expect(got.count == 1 && got[0].data.utf8.count == ServerSentEventParser.maximumLineBytes - "data: ".count)
    }
}
