/// One HTTP/1.1 exchange on its own connection: the request sent, the
/// response head read, and the body handed out piece by piece as it
/// arrives — all of it for a plain request (``remainingBody()``), or for as
/// long as the server writes, for Server-Sent Events and snapshot content.
///
/// The connection is closed when the value goes away.
struct HTTPStream: ~Copyable {
    /// The status line and headers; ``HTTPResponse/body`` is empty.
    let head: HTTPResponse
    private let socket: Socket
    private let address: ServerAddress
    /// How long each wait for bytes may take, for error messages; the
    /// socket's own timeout enforces it.
    private var timeoutSeconds: Int
    /// Why sending the request failed, if it did: reported when no answer
    /// explains it better.
    private let sendError: Errno?
    private var parser: HTTPResponseParser
    /// Body bytes received with the head, not yet handed out.
    private var pending: [UInt8]

    /// Sends `request` and reads the response head, whatever its status.
    ///
    /// If remapd refuses the request early (say a body too large) it may
    /// answer and hang up before taking the whole body. Its answer is more
    /// useful than EPIPE, so it is read before the send error is reported.
    ///
    /// - Parameter timeoutSeconds: For connecting, sending and each wait
    ///   for the response.
    /// - Throws: ``ClientError`` for connection, timeout and protocol
    ///   failures. An HTTP error status is not thrown here; it is the
    ///   caller's to interpret.
    init(_ request: HTTPRequest, address: ServerAddress, timeoutSeconds: Int) throws(ClientError) {
        let socket = try Socket.connect(to: address, timeout: timeoutSeconds)
        var sendError: Errno?
        do throws(Errno) {
            try socket.send(request.serialized(host: address.hostHeader))
        } catch {
            sendError = error
        }

        var parser = HTTPResponseParser()
        var pending: [UInt8] = []
        while parser.head == nil {
            let received = try Self.receive(
                socket, sendError: sendError, address: address, timeoutSeconds: timeoutSeconds)
            do throws(HTTPResponseParser.Failure) {
                if received.isEmpty {
                    try parser.finish()
                } else {
                    pending += try parser.feed(received)
                }
            } catch {
                if let sendError {
                    throw Self.clientError(for: sendError, address: address, timeoutSeconds: timeoutSeconds)
                }
                throw .malformedResponse(error.reason)
            }
        }
        guard let head = parser.head else { preconditionFailure("the loop above ends only with a head") }

        self.head = head
        self.socket = socket
        self.address = address
        self.timeoutSeconds = timeoutSeconds
        self.sendError = sendError
        self.parser = parser
        self.pending = pending
    }

    /// Waits up to `seconds` (`nil`: for ever, as a stream of rare events
    /// must) for each piece of the body from now on, and has the kernel
    /// probe an idle TCP connection so that a peer that vanished is
    /// noticed.
    mutating func setBodyTimeout(_ seconds: Int?) throws(ClientError) {
        do throws(Errno) {
            try socket.setReceiveTimeout(seconds)
        } catch {
            throw .connectionLost(address, error)
        }
        socket.enableKeepAlive()
        timeoutSeconds = seconds ?? 0
    }

    /// The next body bytes, waiting for them if need be; `nil` once the body
    /// is complete.
    ///
    /// - Throws: ``ClientError/connectionLost(_:_:)`` when the server hangs
    ///   up before the body is complete (for an event stream: the stream
    ///   dropped), ``ClientError/timedOut(_:seconds:)``, or
    ///   ``ClientError/malformedResponse(_:)``.
    mutating func next() throws(ClientError) -> [UInt8]? {
        if !pending.isEmpty {
            defer { pending = [] }
            return pending
        }
        while !parser.isComplete {
            let received = try Self.receive(
                socket, sendError: sendError, address: address, timeoutSeconds: timeoutSeconds)
            do throws(HTTPResponseParser.Failure) {
                if received.isEmpty {
                    try parser.finish()
                    return nil
                }
                let body = try parser.feed(received)
                if !body.isEmpty { return body }
            } catch {
                throw received.isEmpty ? .connectionLost(address, .connectionReset) : .malformedResponse(error.reason)
            }
        }
        return nil
    }

    /// The rest of the body, for a response read whole.
    mutating func remainingBody() throws(ClientError) -> [UInt8] {
        var body: [UInt8] = []
        while let bytes = try next() {
            body += bytes
            guard body.count <= HTTPConnection.maximumResponseBytes else {
                throw .malformedResponse("the response exceeds \(HTTPConnection.maximumResponseBytes) bytes")
            }
        }
        return body
    }

    /// One receive; an empty result means the server closed.
    private static func receive(
        _ socket: borrowing Socket, sendError: Errno?, address: ServerAddress, timeoutSeconds: Int
    ) throws(ClientError) -> [UInt8] {
        do throws(Errno) {
            return try socket.receive()
        } catch {
            throw clientError(for: sendError ?? error, address: address, timeoutSeconds: timeoutSeconds)
        }
    }

    private static func clientError(for error: Errno, address: ServerAddress, timeoutSeconds: Int) -> ClientError {
        error == .wouldBlock || error == .timedOut
            ? .timedOut(address, seconds: timeoutSeconds)
            : .connectionLost(address, error)
    }
}
