/// remapctl's HTTP/1.1 client: one request per connection, over remapd's
/// unix socket or TCP.
///
/// Foundation's URLSession cannot reach a unix socket on Linux, and one
/// `Connection: close` exchange needs little more than a status line, some
/// headers and a body, so this speaks HTTP directly over POSIX sockets.
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
        let socket = try Socket.connect(to: address, timeout: timeoutSeconds)

        // If the daemon refuses the request early (say a body too large) it
        // may answer and hang up before taking the whole body. Its answer is
        // more useful than EPIPE, so read it before reporting the send error.
        var sendError: Errno?
        do throws(Errno) {
            try socket.send(request.serialized(host: address.hostHeader))
        } catch {
            sendError = error
        }

        var buffer: [UInt8] = []
        while true {
            let received: [UInt8]
            do throws(Errno) {
                received = try socket.receive()
            } catch {
                throw clientError(for: sendError ?? error)
            }
            buffer += received
            guard buffer.count <= Self.maximumResponseBytes else {
                throw .malformedResponse("the response exceeds \(Self.maximumResponseBytes) bytes")
            }
            do throws(HTTPResponseParser.Failure) {
                if let response = try HTTPResponseParser.parse(buffer, atEndOfStream: received.isEmpty) {
                    return response
                }
            } catch {
                if let sendError { throw clientError(for: sendError) }
                throw .malformedResponse(error.reason)
            }
        }
    }

    private func clientError(for error: Errno) -> ClientError {
        error == .wouldBlock || error == .timedOut
            ? .timedOut(address, seconds: timeoutSeconds)
            : .connectionLost(address, error)
    }
}
