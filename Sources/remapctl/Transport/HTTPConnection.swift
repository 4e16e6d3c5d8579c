/// remapctl's HTTP/1.1 client: one request per connection, over remapd's
/// unix socket or TCP.
///
/// Foundation's URLSession cannot reach a unix socket on Linux, and one
/// `Connection: close` exchange needs little more than a status line, some
/// headers and a body, so this speaks HTTP directly over POSIX sockets
/// (``HTTPStream``).
struct HTTPConnection: Sendable {
    /// Where remapd listens.
    let address: ServerAddress
    /// How long connecting, sending and each wait for response bytes may take.
    var timeoutSeconds: Int = 30

    /// Responses larger than this are refused; remapd's biggest is a volume
    /// list, far below it.
    static let maximumResponseBytes = 64 << 20

    /// Sends `request` on a fresh connection and reads the whole response.
    ///
    /// - Throws: ``ClientError`` for connection, timeout and protocol
    ///   failures. An HTTP error status is not thrown here; it is the caller's
    ///   to interpret.
    func send(_ request: HTTPRequest) throws(ClientError) -> HTTPResponse {
        var stream = try open(request)
        var response = stream.head
        response.body = try stream.remainingBody()
        return response
    }

    /// Sends `request` on a fresh connection and reads the response head;
    /// the body is the caller's to read.
    func open(_ request: HTTPRequest) throws(ClientError) -> HTTPStream {
        try HTTPStream(request, address: address, timeoutSeconds: timeoutSeconds)
    }
}
