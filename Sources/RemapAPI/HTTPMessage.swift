/// A request as the router sees it: the body is complete.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The path, percent-decoded, without the query.
    public var path: String
    public var contentType: String?
    public var body: [UInt8]
}

/// A response ready to send.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var contentType: String?
    public var headers: [(String, String)] = []
    public var body: [UInt8]

    static func noContent() -> HTTPResponse {
        HTTPResponse(status: 204, contentType: nil, body: [])
    }
}
