import RemapWire
/// One HTTP/1.1 request as remapctl sends it: always `Connection: close`,
/// asking for JSON unless told otherwise, with a JSON body when there is one.
struct HTTPRequest: Sendable {
    var method: String
    /// The request target, already percent-encoded (see ``PathComponent``).
    var path: String
    /// A JSON document to send, if any.
    var body: [UInt8]?
    /// Sent as `Authorization: Bearer <token>` when set.
    var bearerToken: String?
    /// The media type asked for; `/metrics` answers in Prometheus text.
    var accept: String
    /// Further header fields, e.g. `Last-Event-ID`. Values must not hold
    /// line breaks.
    var extraHeaders: [(name: String, value: String)] = []

    init(
        method: String, path: String, body: [UInt8]? = nil, bearerToken: String? = nil,
        accept: String = "application/json"
    ) {
        self.method = method
        self.path = path
        self.body = body
        self.bearerToken = bearerToken
        self.accept = accept
    }

    /// The bytes on the wire: request line, headers, blank line, body.
    func serialized(host: String) -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\n"
        head += "Host: \(host)\r\n"
        head += "User-Agent: remapctl/\(RemapCtl.version)\r\n"
        head += "Connection: close\r\n"
        head += "Accept: \(accept)\r\n"
        if let bearerToken {
            head += "Authorization: Bearer \(bearerToken)\r\n"
        }
        for header in extraHeaders {
            head += "\(header.name): \(header.value.singleLine)\r\n"
        }
        if let body {
            head += "Content-Type: application/json\r\n"
            head += "Content-Length: \(body.count)\r\n"
        } else if method == "POST" || method == "PUT" || method == "PATCH" {
            head += "Content-Length: 0\r\n"
        }
        head += "\r\n"
        return Array(head.utf8) + (body ?? [])
    }
}
