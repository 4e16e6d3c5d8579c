import RemapWire
/// Removes HTTP/1.1's chunked transfer-coding from a body fed in pieces as
/// they arrive, keeping its place between calls: ``HTTPResponseParser``'s
/// decoder for chunked bodies, whether read whole or as a stream that never
/// ends on its own. Chunk extensions and trailers are ignored.
struct ChunkedDecoder {
    private enum State {
        /// Reading a chunk-size line.
        case size
        /// Inside a chunk's data, with this many bytes to go.
        case data(remaining: Int)
        /// Expecting the CRLF after a chunk's data.
        case dataEnd
        /// After the last chunk: trailer lines up to a blank one.
        case trailer
        case done
    }

    private var state = State.size
    /// The part of a size, CRLF or trailer line received so far.
    private var line: [UInt8] = []

    /// Whether the last chunk and the blank line after it have arrived.
    var isComplete: Bool {
        if case .done = state { return true }
        return false
    }

    /// The body bytes in `bytes`. Bytes after the end of the body are
    /// ignored.
    mutating func decode(_ bytes: ArraySlice<UInt8>) throws(HTTPResponseParser.Failure) -> [UInt8] {
        var body: [UInt8] = []
        var position = bytes.startIndex
        while position < bytes.endIndex {
            switch state {
            case .data(let remaining):
                let count = min(remaining, bytes.endIndex - position)
                body += bytes[position..<position + count]
                position += count
                state = remaining == count ? .dataEnd : .data(remaining: remaining - count)
            case .size, .dataEnd, .trailer:
                let byte = bytes[position]
                position += 1
                line.append(byte)
                // Only a line break may follow a chunk's data: say so at the
                // first byte that is not one rather than at the next line's end.
                if case .dataEnd = state, line != [13], line != [10], line != [13, 10] {
                    throw HTTPResponseParser.Failure(reason: "chunk data is not followed by CRLF")
                }
                guard byte == 10 else {
                    if line.count > HTTPResponseParser.maximumHeaderBytes {
                        throw HTTPResponseParser.Failure(reason: "a chunk line exceeds the limit")
                    }
                    continue
                }
                let text = String(decoding: line.dropLast(line.count >= 2 && line[line.count - 2] == 13 ? 2 : 1), as: UTF8.self)
                line = []
                try finish(line: text)
            case .done:
                return body
            }
        }
        return body
    }

    private mutating func finish(line text: String) throws(HTTPResponseParser.Failure) {
        switch state {
        case .size:
            let sizeText = text.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false)
                .first?.trimmed ?? ""
            guard let size = Int(sizeText, radix: 16), size >= 0, size <= HTTPResponseParser.maximumChunkBytes else {
                throw HTTPResponseParser.Failure(reason: "invalid chunk size '\(text.prefix(40))'")
            }
            state = size == 0 ? .trailer : .data(remaining: size)
        case .dataEnd:
            guard text.isEmpty else {
                throw HTTPResponseParser.Failure(reason: "chunk data is not followed by CRLF")
            }
            state = .size
        case .trailer:
            if text.isEmpty { state = .done }
        case .data, .done:
            break
        }
    }
}
