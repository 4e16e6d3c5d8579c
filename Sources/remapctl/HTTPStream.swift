import RemapWire
/// One HTTP/1.1 exchange whose response body is read piece by piece as it
/// arrives, for Server-Sent Events: the stream has no end, so
/// ``HTTPConnection/send(_:)``'s read-it-all cannot serve it.
///
/// The connection is closed when the value goes away.
struct HTTPStream: ~Copyable {
    /// The status line and headers; ``HTTPResponse/body`` is empty.
    let head: HTTPResponse
    private let socket: Socket
    private let address: ServerAddress
    private let bodyTimeoutSeconds: Int?
    private var framing: Framing
    /// Body bytes received with the head, not yet handed out.
    private var pending: [UInt8]

    private enum Framing {
        case chunked(ChunkedDecoder)
        case length(remaining: Int)
        /// No length: the body ends when the server closes.
        case untilClose(closed: Bool)
    }

    /// Sends `request` and reads the response head.
    ///
    /// - Parameters:
    ///   - timeoutSeconds: For connecting, sending and the head.
    ///   - bodyTimeoutSeconds: For each wait for body bytes; `nil` waits
    ///     for ever.
    /// - Throws: ``ClientError``, including ``ClientError/problem(_:httpStatus:reason:)``
    ///   for an error status (its body is read first).
    init(
        _ request: HTTPRequest, address: ServerAddress, timeoutSeconds: Int, bodyTimeoutSeconds: Int?
    ) throws(ClientError) {
        let socket = try Socket.connect(to: address, timeout: timeoutSeconds)
        do throws(Errno) {
            try socket.send(request.serialized(host: address.hostHeader))
        } catch {
            throw Self.clientError(for: error, address: address, timeoutSeconds: timeoutSeconds)
        }

        var buffer: [UInt8] = []
        var head: (response: HTTPResponse, bodyStart: Int)?
        while head == nil {
            let received = try Self.receive(socket, address: address, timeoutSeconds: timeoutSeconds)
            buffer += received
            do throws(HTTPResponseParser.Failure) {
                head = try HTTPResponseParser.head(buffer)
                if head == nil, received.isEmpty {
                    // Let the full parser word the failure.
                    _ = try HTTPResponseParser.parse(buffer, atEndOfStream: true)
                    throw HTTPResponseParser.Failure(reason: "remapd closed the connection without answering")
                }
            } catch {
                throw .malformedResponse(error.reason)
            }
        }
        guard let (response, bodyStart) = head else {
            preconditionFailure("the loop above ends only with a head")
        }

        guard response.isSuccess else {
            let complete = try Self.readToEnd(socket, buffer, address: address, timeoutSeconds: timeoutSeconds)
            throw .problem(APIClient.problem(in: complete), httpStatus: complete.status, reason: complete.reason)
        }

        let framing: Framing
        if let coding = response.header("Transfer-Encoding"),
           coding.lowercased().split(separator: ",").last?.trimmed == "chunked" {
            framing = .chunked(ChunkedDecoder())
        } else if let lengthText = response.header("Content-Length") {
            guard let length = Int(lengthText.trimmed), length >= 0 else {
                throw .malformedResponse("invalid Content-Length '\(lengthText)'")
            }
            framing = .length(remaining: length)
        } else {
            framing = .untilClose(closed: false)
        }
        do throws(Errno) {
            try socket.setReceiveTimeout(bodyTimeoutSeconds)
        } catch {
            throw .connectionLost(address, error)
        }
        socket.enableKeepAlive()

        self.head = response
        self.framing = framing
        self.socket = socket
        self.address = address
        self.bodyTimeoutSeconds = bodyTimeoutSeconds
        self.pending = Array(buffer[bodyStart...])
    }

    /// Whether the whole body has arrived.
    var isComplete: Bool {
        switch framing {
        case .chunked(let decoder): decoder.isComplete
        case .length(let remaining): remaining == 0
        case .untilClose(let closed): closed
        }
    }

    /// The next body bytes, waiting for them if need be; `nil` once the body
    /// is complete.
    ///
    /// - Throws: ``ClientError/connectionLost(_:_:)`` when the server hangs
    ///   up before the body is complete (for an event stream: the stream
    ///   dropped), ``ClientError/timedOut(_:seconds:)``, or
    ///   ``ClientError/malformedResponse(_:)``.
    mutating func next() throws(ClientError) -> [UInt8]? {
        while !isComplete {
            var bytes = pending
            pending = []
            if bytes.isEmpty {
                bytes = try Self.receive(socket, address: address, timeoutSeconds: bodyTimeoutSeconds ?? 0)
                if bytes.isEmpty {
                    if case .untilClose = framing {
                        framing = .untilClose(closed: true)
                        return nil
                    }
                    throw .connectionLost(address, .connectionReset)
                }
            }
            let body = try unframe(bytes)
            if !body.isEmpty { return body }
        }
        return nil
    }

    /// The rest of the body, for a response that turned out not to be a
    /// stream after all.
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

    private mutating func unframe(_ bytes: [UInt8]) throws(ClientError) -> [UInt8] {
        switch framing {
        case .chunked(var decoder):
            do throws(HTTPResponseParser.Failure) {
                let body = try decoder.decode(bytes)
                framing = .chunked(decoder)
                return body
            } catch {
                throw .malformedResponse(error.reason)
            }
        case .length(let remaining):
            let body = Array(bytes.prefix(remaining))
            framing = .length(remaining: remaining - body.count)
            return body
        case .untilClose:
            return bytes
        }
    }

    /// One receive; `timeoutSeconds` only words the error when the socket's
    /// own timeout expires.
    private static func receive(
        _ socket: borrowing Socket, address: ServerAddress, timeoutSeconds: Int
    ) throws(ClientError) -> [UInt8] {
        do throws(Errno) {
            return try socket.receive()
        } catch {
            throw clientError(for: error, address: address, timeoutSeconds: timeoutSeconds)
        }
    }

    /// The whole response whose first bytes are in `buffer`.
    private static func readToEnd(
        _ socket: borrowing Socket, _ buffer: [UInt8], address: ServerAddress, timeoutSeconds: Int
    ) throws(ClientError) -> HTTPResponse {
        var buffer = buffer
        var atEnd = false
        while true {
            do throws(HTTPResponseParser.Failure) {
                if let response = try HTTPResponseParser.parse(buffer, atEndOfStream: atEnd) {
                    return response
                }
            } catch {
                throw .malformedResponse(error.reason)
            }
            let received = try receive(socket, address: address, timeoutSeconds: timeoutSeconds)
            atEnd = received.isEmpty
            buffer += received
            guard buffer.count <= HTTPConnection.maximumResponseBytes else {
                throw .malformedResponse("the response exceeds \(HTTPConnection.maximumResponseBytes) bytes")
            }
        }
    }

    private static func clientError(for error: Errno, address: ServerAddress, timeoutSeconds: Int) -> ClientError {
        error == .wouldBlock || error == .timedOut
            ? .timedOut(address, seconds: timeoutSeconds)
            : .connectionLost(address, error)
    }
}
