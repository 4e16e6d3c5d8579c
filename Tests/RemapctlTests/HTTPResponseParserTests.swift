@testable import remapctl
import Testing

/// remapctl's one reader of HTTP/1.1 responses, fed as bytes arrive.
@Suite struct HTTPResponseParserTests {
    /// What the parser makes of `bytes` fed in pieces of `piece` bytes, then
    /// (with `close`) the server hanging up.
    private func read(_ text: String, piece: Int = .max, close: Bool = false) throws(HTTPResponseParser.Failure)
        -> (response: HTTPResponse?, complete: Bool) {
        let bytes = Array(text.utf8)
        var parser = HTTPResponseParser()
        var body: [UInt8] = []
        var start = 0
        while start < bytes.count {
            let end = min(start + min(piece, bytes.count - start), bytes.count)
            body += try parser.feed(Array(bytes[start..<end]))
            start = end
        }
        if close { try parser.finish() }
        guard var response = parser.head else { return (nil, parser.isComplete) }
        response.body = body
        return (response, parser.isComplete)
    }

    private func failure(_ text: String, close: Bool = false) -> String? {
        do {
            _ = try read(text, close: close)
            return nil
        } catch {
            return error.reason
        }
    }

    private static let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        + "5;name=value\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: x\r\n\r\nafter the end"

    @Test func reads_a_response_with_a_length() throws {
        let (response, complete) = try read("HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello")
        #expect(complete)
        #expect(response?.status == 404 && response?.reason == "Not Found")
        #expect(response?.header("x-a") == "b" && response?.header("content-length") == "5")
        #expect(response?.body == Array("hello".utf8))
    }

    /// Every split of the bytes gives the same response: nothing depends on
    /// how the network cut them.
    @Test(arguments: [1, 2, 3, 5, 7, 64])
    func reads_a_chunked_body_whatever_the_pieces(piece: Int) throws {
        let (response, complete) = try read(Self.chunked, piece: piece)
        #expect(complete)
        #expect(response.map { String(decoding: $0.body, as: UTF8.self) } == "hello world!")
        #expect(response?.header("Content-Type") == "text/plain")
    }

    @Test func is_incomplete_until_the_last_chunk() throws {
        let cut = String(Self.chunked.prefix(Self.chunked.count - "0\r\nTrailer: x\r\n\r\nafter the end".count))
        let (response, complete) = try read(cut)
        #expect(!complete)
        #expect(response.map { String(decoding: $0.body, as: UTF8.self) } == "hello world!")
        #expect(failure(cut, close: true) == "the chunked body ended early")
    }

    @Test func skips_interim_responses() throws {
        let (response, complete) = try read(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
            piece: 4)
        #expect(complete && response?.status == 201 && response?.body == Array("ok".utf8))
    }

    @Test func a_body_without_a_length_ends_with_the_connection() throws {
        let open = try read("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: 1\n\n")
        #expect(!open.complete && open.response?.body == Array("data: 1\n\n".utf8))
        let closed = try read("HTTP/1.1 200 OK\r\n\r\nall", close: true)
        #expect(closed.complete && closed.response?.body == Array("all".utf8))
    }

    @Test func no_content_has_no_body() throws {
        let (response, complete) = try read("HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n")
        #expect(complete && response?.status == 204 && response?.body == [])
    }

    @Test func status_line_without_a_reason() throws {
        #expect(try read("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").response?.reason == "")
        #expect(try read("HTTP/1.0 500 \r\nContent-Length: 0\r\n\r\n").response?.status == 500)
    }

    @Test(arguments: [
        ("", "remapd closed the connection without answering"),
        ("HTTP/1.1 200 OK\r\nContent-", "the response ended inside its headers"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "the body ended after 3 of 10 bytes"),
    ])
    func a_response_cut_short_is_refused(text: String, reason: String) {
        #expect(failure(text, close: true) == reason)
    }

    @Test(arguments: [
        ("SMTP ready\r\n\r\n", "invalid status line 'SMTP ready'"),
        ("HTTP/1.1 20 OK\r\n\r\n", "invalid status line 'HTTP/1.1 20 OK'"),
        ("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "invalid header line 'no colon'"),
        ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length '-1'"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size 'zz'"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n80000000\r\n", "invalid chunk size '80000000'"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd", "chunk data is not followed by CRLF"),
    ])
    func malformed_responses_are_refused(text: String, reason: String) {
        #expect(failure(text) == reason)
    }

    @Test func headers_are_bounded() {
        let huge = "HTTP/1.1 200 OK\r\nX: " + String(repeating: "a", count: HTTPResponseParser.maximumHeaderBytes)
        #expect(failure(huge) == "response headers exceed 65536 bytes")
    }
}

/// The one decoder of chunked bodies, on its own.
@Suite struct ChunkedDecoderTests {
    @Test func keeps_its_place_between_pieces() throws {
        var decoder = ChunkedDecoder()
        var body: [UInt8] = []
        for piece in ["3\r", "\nab", "c\r\n", "A\r\n0123456", "789\r\n0\r\n", "\r\n"] {
            #expect(!decoder.isComplete)
            body += try decoder.decode(Array(piece.utf8)[...])
        }
        #expect(decoder.isComplete)
        #expect(String(decoding: body, as: UTF8.self) == "abc0123456789")
        #expect(try decoder.decode(Array("5\r\nmore!\r\n".utf8)[...]) == [])
    }

    @Test func accepts_bare_line_feeds() throws {
        var decoder = ChunkedDecoder()
        #expect(try decoder.decode(Array("2\nhi\n0\n\n".utf8)[...]) == Array("hi".utf8))
        #expect(decoder.isComplete)
    }
}
