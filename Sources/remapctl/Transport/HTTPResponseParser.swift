import RemapWire
/// Reads one HTTP/1.1 response from the bytes of a connection, fed as they
/// arrive: the head once it is complete, then the body with its framing
/// (chunked, `Content-Length`, or up to the end of the stream) removed piece
/// by piece.
///
/// One pass serves both a response read whole and an event stream that
/// never ends: nothing is parsed twice and nothing is buffered but an
/// incomplete head or chunk line.
struct HTTPResponseParser {
    /// Why the bytes are not a valid HTTP/1.1 response.
    struct Failure: Error, Equatable {
        let reason: String
    }

    /// Headers larger than this are refused rather than buffered for ever.
    static let maximumHeaderBytes = 64 * 1024
    /// Chunk sizes above this are refused; remapd never sends one.
    static let maximumChunkBytes = 1 << 30

    /// The status line and headers, once they have arrived, after any
    /// interim (1xx) responses; its ``HTTPResponse/body`` is empty.
    private(set) var head: HTTPResponse?

    /// What has arrived of the head.
    private var headBytes: [UInt8] = []
    /// Where the search for the blank line that ends the head resumes.
    private var searchFrom = 0
    private var framing = Framing.none

    private enum Framing {
        /// Before the head, and for responses that have no body (204, 304).
        case none
        case chunked(ChunkedDecoder)
        case length(remaining: Int, total: Int)
        /// No length: the body ends when the server closes.
        case untilClose(closed: Bool)
    }

    /// Whether the whole response has arrived.
    var isComplete: Bool {
        guard head != nil else { return false }
        switch framing {
        case .none: return true
        case .chunked(let decoder): return decoder.isComplete
        case .length(let remaining, _): return remaining == 0
        case .untilClose(let closed): return closed
        }
    }

    /// Takes the next bytes received and returns the body bytes among
    /// them. Bytes after the end of the response are ignored.
    mutating func feed(_ bytes: [UInt8]) throws(Failure) -> [UInt8] {
        guard head == nil else { return try unframe(bytes[...]) }
        headBytes += bytes
        while true {
            guard let end = headBytes.firstRange(of: Self.blankLine, from: searchFrom) else {
                if headBytes.count > Self.maximumHeaderBytes {
                    throw Failure(reason: "response headers exceed \(Self.maximumHeaderBytes) bytes")
                }
                searchFrom = max(headBytes.count - Self.blankLine.count + 1, 0)
                return []
            }
            let response = try Self.parseHead(headBytes[..<end.lowerBound])
            let rest = headBytes[end.upperBound...]
            // Interim responses (100 Continue and friends) precede the real one.
            if (100..<200).contains(response.status) && response.status != 101 {
                headBytes = Array(rest)
                searchFrom = 0
                continue
            }
            head = response
            framing = try Self.framing(of: response)
            headBytes = []
            return try unframe(rest)
        }
    }

    /// The server has closed its side: a body without a length ends here,
    /// and a response that is not complete is a failure.
    mutating func finish() throws(Failure) {
        guard head != nil else {
            throw Failure(reason: headBytes.isEmpty
                ? "remapd closed the connection without answering"
                : "the response ended inside its headers")
        }
        switch framing {
        case .untilClose:
            framing = .untilClose(closed: true)
        case .chunked(let decoder) where !decoder.isComplete:
            throw Failure(reason: "the chunked body ended early")
        case .length(let remaining, let total) where remaining > 0:
            throw Failure(reason: "the body ended after \(total - remaining) of \(total) bytes")
        case .none, .chunked, .length:
            break
        }
    }

    private mutating func unframe(_ bytes: ArraySlice<UInt8>) throws(Failure) -> [UInt8] {
        switch framing {
        case .none:
            return []
        case .chunked(var decoder):
            let body = try decoder.decode(bytes)
            framing = .chunked(decoder)
            return body
        case .length(let remaining, let total):
            let body = Array(bytes.prefix(remaining))
            framing = .length(remaining: remaining - body.count, total: total)
            return body
        case .untilClose:
            return Array(bytes)
        }
    }

    private static let blankLine: [UInt8] = [13, 10, 13, 10]

    /// How the body of `response` is delimited.
    private static func framing(of response: HTTPResponse) throws(Failure) -> Framing {
        if response.status == 204 || response.status == 304 {
            return .none
        }
        if let coding = response.header("Transfer-Encoding"),
           coding.lowercased().split(separator: ",").last?.trimmed == "chunked" {
            return .chunked(ChunkedDecoder())
        }
        if let lengthText = response.header("Content-Length") {
            guard let length = Int(lengthText.trimmed), length >= 0 else {
                throw Failure(reason: "invalid Content-Length '\(lengthText)'")
            }
            return .length(remaining: length, total: length)
        }
        return .untilClose(closed: false)
    }

    /// Parses the status line and header fields.
    private static func parseHead(_ bytes: ArraySlice<UInt8>) throws(Failure) -> HTTPResponse {
        let text = String(decoding: bytes, as: UTF8.self)
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)[...]
        guard let statusLine = lines.popFirst() else {
            throw Failure(reason: "missing status line")
        }
        // "HTTP/1.1 404 Not Found"; the reason phrase may be empty or absent.
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."),
              parts[1].count == 3, let status = Int(parts[1]), status >= 100
        else {
            throw Failure(reason: "invalid status line '\(statusLine.prefix(80))'")
        }
        let reason = parts.count > 2 ? String(parts[2]) : ""

        var headers: [(name: String, value: String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex else {
                throw Failure(reason: "invalid header line '\(line.prefix(80))'")
            }
            let name = String(line[..<colon])
            let value = String(line[line.index(after: colon)...].trimmed)
            headers.append((name, value))
        }
        return HTTPResponse(status: status, reason: reason, headers: headers, body: [])
    }
}

extension Array where Element == UInt8 {
    /// The first occurrence of `pattern` at or after `start`.
    fileprivate func firstRange(of pattern: [UInt8], from start: Int) -> Range<Int>? {
        guard !pattern.isEmpty, start <= count - pattern.count else { return nil }
        var candidate = Swift.max(start, 0)
        while candidate <= count - pattern.count {
            if self[candidate..<candidate + pattern.count].elementsEqual(pattern) {
                return candidate..<candidate + pattern.count
            }
            candidate += 1
        }
        return nil
    }
}
