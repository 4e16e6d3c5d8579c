/// A request as the router sees it: the body is complete.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The path as sent (still percent-encoded), without the query.
    public var path: String
    public var contentType: String?
    /// The Accept header, and SSE's Last-Event-ID.
    public var accept: String?
    public var lastEventID: String?
    /// The Range header (content downloads).
    public var range: String?
    /// Query parameters in order, percent-decoded.
    public var query: [(name: String, value: String)] = []
    public var body: [UInt8]
    /// What the server knows of the connection (nil outside a server).
    var connection: HTTPConnectionContext?
}

/// The connection a request came on, as the routes need it.
struct HTTPConnectionContext: Sendable {
    /// The listener's cap on event streams.
    let eventStreams: EventStreamSlots
    /// Whether the client has closed the connection.
    let clientLeft: @Sendable () -> Bool
}

extension HTTPRequest {
    /// A request without headers or query, for callers outside the server
    /// (the fuzz targets) to fill in.
    public init(method: String, path: String, body: [UInt8] = []) {
        self.init(method: method, path: path, contentType: nil, body: body)
    }
}

/// A response ready to send.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var contentType: String?
    public var headers: [(String, String)] = []
    public var body: [UInt8]
    /// When set, the body is streamed from it instead (Server-Sent Events,
    /// snapshot content).
    var stream: (any ResponseStream)?

    static func noContent() -> HTTPResponse {
        HTTPResponse(status: 204, contentType: nil, body: [])
    }

    static func eventStream(_ stream: EventStream) -> HTTPResponse {
        var response = HTTPResponse(status: 200, contentType: "text/event-stream", body: [])
        response.headers = [("Cache-Control", "no-cache")]
        response.stream = stream
        return response
    }
}

/// A response body produced piece by piece on the connection's thread.
protocol ResponseStream: AnyObject, Sendable {
    /// The body's length, when known (sent as Content-Length).
    var length: UInt64? { get }
    /// Fills up to `maximum` bytes at `buffer`; returns how many, or nil at
    /// the end (or on failure: the connection is closed).
    func read(into buffer: UnsafeMutableRawPointer, maximum: Int) -> Int?
    /// The client left or the server is stopping.
    func end()
    var isEnded: Bool { get }
}

/// Percent-decoding of one path segment; nil when the escapes are malformed
/// or the result is not UTF-8.
func percentDecoded(_ segment: Substring) -> String? {
    var bytes: [UInt8] = []
    var iterator = segment.utf8.makeIterator()
    while let byte = iterator.next() {
        guard byte == UInt8(ascii: "%") else {
            bytes.append(byte)
            continue
        }
        guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
        bytes.append(high << 4 | low)
    }
    return String(validating: bytes, as: UTF8.self)
}

private func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
    default: return nil
    }
}
