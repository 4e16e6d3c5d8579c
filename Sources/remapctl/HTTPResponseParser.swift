import RemapWire
/// Turns the bytes read from remapd into an ``HTTPResponse``.
///
/// The parser is re-run on the whole buffer as bytes arrive, so the client
/// can stop reading as soon as the response is complete instead of relying
/// on the server closing the connection. Responses to remapctl are small, so
/// re-parsing costs nothing worth optimising.
enum HTTPResponseParser {
    /// Why the bytes are not a valid HTTP/1.1 response.
    struct Failure: Error, Equatable {
        let reason: String
    }

    /// Headers larger than this are refused rather than buffered forever.
    static let maximumHeaderBytes = 64 * 1024
    /// Chunk sizes above this are refused; remapd never sends one.
    static let maximumChunkBytes = 1 << 30

    /// Parses the response in `buffer`.
    ///
    /// - Parameters:
    ///   - buffer: Every byte received so far.
    ///   - atEndOfStream: The server has closed its side. A body without a
    ///     length then ends here, and an incomplete response is an error.
    /// - Returns: The response once `buffer` holds all of it, or `nil` when
    ///   more bytes are needed.
    static func parse(_ buffer: [UInt8], atEndOfStream: Bool) throws(Failure) -> HTTPResponse? {
        var start = 0
        while true {
            guard let headerEnd = buffer.firstRange(of: Self.blankLine, from: start) else {
                if buffer.count - start > maximumHeaderBytes {
                    throw Failure(reason: "response headers exceed \(maximumHeaderBytes) bytes")
                }
                guard atEndOfStream else { return nil }
                throw Failure(reason: buffer.count == start
                    ? "remapd closed the connection without answering"
                    : "the response ended inside its headers")
            }
            var response = try parseHead(buffer[start..<headerEnd.lowerBound])
            let bodyStart = headerEnd.upperBound

            // Interim responses (100 Continue and friends) precede the real one.
            if (100..<200).contains(response.status) && response.status != 101 {
                start = bodyStart
                continue
            }
            if response.status == 204 || response.status == 304 {
                return response
            }
            let rest = buffer[bodyStart...]
            if let coding = response.header("Transfer-Encoding"),
               coding.lowercased().split(separator: ",").last?.trimmed == "chunked" {
                guard let body = try decodeChunked(rest) else {
                    if atEndOfStream { throw Failure(reason: "the chunked body ended early") }
                    return nil
                }
                response.body = body
                return response
            }
            if let lengthText = response.header("Content-Length") {
                guard let length = Int(lengthText.trimmed), length >= 0 else {
                    throw Failure(reason: "invalid Content-Length '\(lengthText)'")
                }
                guard rest.count >= length else {
                    if atEndOfStream {
                        throw Failure(reason: "the body ended after \(rest.count) of \(length) bytes")
                    }
                    return nil
                }
                response.body = Array(rest.prefix(length))
                return response
            }
            guard atEndOfStream else { return nil }
            response.body = Array(rest)
            return response
        }
    }

    /// The head of the response in `buffer`, after any interim (1xx)
    /// responses, and the index where its body starts; `nil` while the head
    /// has not fully arrived. For responses read as they stream in.
    static func head(_ buffer: [UInt8]) throws(Failure) -> (response: HTTPResponse, bodyStart: Int)? {
        var start = 0
        while true {
            guard let headerEnd = buffer.firstRange(of: Self.blankLine, from: start) else {
                if buffer.count - start > maximumHeaderBytes {
                    throw Failure(reason: "response headers exceed \(maximumHeaderBytes) bytes")
                }
                return nil
            }
            let response = try parseHead(buffer[start..<headerEnd.lowerBound])
            if (100..<200).contains(response.status) && response.status != 101 {
                start = headerEnd.upperBound
                continue
            }
            return (response, headerEnd.upperBound)
        }
    }

    private static let lineBreak: [UInt8] = [13, 10]
    private static let blankLine: [UInt8] = [13, 10, 13, 10]

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

    /// Removes the chunked transfer-coding, or returns `nil` if the last
    /// chunk has not arrived yet. Chunk extensions and trailers are ignored.
    private static func decodeChunked(_ bytes: ArraySlice<UInt8>) throws(Failure) -> [UInt8]? {
        var body: [UInt8] = []
        var position = bytes.startIndex
        while true {
            guard let sizeLine = bytes.firstRange(of: lineBreak, from: position) else { return nil }
            let sizeField = String(decoding: bytes[position..<sizeLine.lowerBound], as: UTF8.self)
            let sizeText = sizeField.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false)
                .first?.trimmed ?? ""
            guard let size = Int(sizeText, radix: 16), size >= 0, size <= maximumChunkBytes else {
                throw Failure(reason: "invalid chunk size '\(sizeField.prefix(40))'")
            }
            position = sizeLine.upperBound

            if size == 0 {
                // Trailer fields, then the blank line that ends the message.
                while true {
                    guard let line = bytes.firstRange(of: lineBreak, from: position) else { return nil }
                    if line.lowerBound == position { return body }
                    position = line.upperBound
                }
            }
            guard bytes.endIndex - position >= size + 2 else { return nil }
            body.append(contentsOf: bytes[position..<position + size])
            position += size
            guard bytes[position] == 13, bytes[position + 1] == 10 else {
                throw Failure(reason: "chunk data is not followed by CRLF")
            }
            position += 2
        }
    }
}

extension Collection where Element == UInt8, Index == Int {
    /// The first occurrence of `pattern` at or after `start`.
    fileprivate func firstRange(of pattern: [UInt8], from start: Int) -> Range<Int>? {
        guard !pattern.isEmpty, start <= endIndex - pattern.count else { return nil }
        var candidate = Swift.max(start, startIndex)
        while candidate <= endIndex - pattern.count {
            if self[candidate..<candidate + pattern.count].elementsEqual(pattern) {
                return candidate..<candidate + pattern.count
            }
            candidate += 1
        }
        return nil
    }
}
