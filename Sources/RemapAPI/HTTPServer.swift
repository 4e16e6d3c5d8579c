import CMicroHTTPD
import Glibc
import RemapCore
import RemapWire
import RemapLog
import Synchronization

/// The REST server: libmicrohttpd on one listening socket (unix or TCP),
/// one thread per connection, every request handed to a `Router`.
///
/// Bounds (issue 11), so that clients without the token cannot lock out
/// the ones with it: connections at once (`httpMaxConnections`) and per IP
/// address on TCP (`httpMaxConnectionsPerIP`), one more closed at once by
/// libmicrohttpd; a deadline to send a complete request
/// (`httpRequestTimeoutSeconds`, see `RequestDeadlines`); and a cap on event
/// streams (`httpMaxEventStreams`, 503 beyond it).
public final class HTTPServer: Sendable {
    /// Bodies larger than this are refused with 413.
    public static let maximumBodySize = 1 << 20
    /// Seconds a response may make no progress (the client reads nothing)
    /// before its connection is closed. Longer than an event stream's
    /// keep-alive interval (15 s): libmicrohttpd measures it across the
    /// wait for the next event.
    static let responseIdleSeconds: UInt32 = 60

    private let router: Router
    /// Event streams being served, so stopping can end them.
    private let streams = Mutex<[any ResponseStream]>([])
    /// When set, every request needs `Authorization: Bearer <token>` (TCP).
    private let token: String?
    private let limits: Limits
    let eventStreams: EventStreamSlots
    let deadlines: RequestDeadlines
    /// libmicrohttpd's messages, one line per kind a minute.
    private let messages = LogThrottle()
    // The daemon handle and the log target are set once in start() and
    // cleared in stop(), both from the daemon's main thread.
    private nonisolated(unsafe) var daemon: OpaquePointer?
    private nonisolated(unsafe) var logTarget: UnsafeMutablePointer<cmhd_log_target>?

    public init(router: Router, token: String? = nil, limits: Limits = Limits()) {
        self.router = router
        self.token = token
        self.limits = limits
        self.eventStreams = EventStreamSlots(limit: limits.httpMaxEventStreams)
        self.deadlines = RequestDeadlines(timeoutSeconds: limits.httpRequestTimeoutSeconds)
    }

    /// Starts serving on `listenFD` (bound and listening already). A unix
    /// socket has no client address: the per-IP limit applies to `tcp` only.
    public func start(listenFD: Int32, tcp: Bool) throws(RemapError) {
        let context = Unmanaged.passUnretained(self).toOpaque()
        let target = UnsafeMutablePointer<cmhd_log_target>.allocate(capacity: 1)
        target.initialize(to: cmhd_log_target(callback: logHandler, cls: context))
        let bounds = cmhd_limits(
            connection_limit: UInt32(limits.httpMaxConnections),
            per_ip_connection_limit: !tcp ? 0 : UInt32(limits.httpMaxConnectionsPerIP),
            connection_timeout_seconds: UInt32(limits.httpRequestTimeoutSeconds))
        guard let started = cmhd_start(listenFD, bounds, accessHandler, context, completedHandler, context,
                                       connectionHandler, context, target) else {
            target.deallocate()
            throw .io(errno: errno, context: "starting the REST server")
        }
        daemon = started
        logTarget = target
        deadlines.start()
    }

    /// One of libmicrohttpd's messages (a refused connection, a client that
    /// left mid-request): logged once a minute per kind, not per client.
    fileprivate func libraryMessage(format: String, _ message: String) {
        // libmicrohttpd says the same of both its caps.
        if format.hasPrefix("Server reached connection limit") {
            messages.log(.warning, format, "HTTP API: refused a connection: its address already has \(limits.httpMaxConnectionsPerIP) (--http-max-connections-per-ip) or the listener \(limits.httpMaxConnections) (--http-max-connections)")
        } else {
            messages.log(.notice, format, "HTTP API: \(message)")
        }
    }

    /// The query parameters, percent-decoded ('+' is a space), in order.
    /// libmicrohttpd leaves them escaped (see the shim's unescape callback).
    static func query(_ connection: OpaquePointer) -> [(name: String, value: String)] {
        final class Collected { var pairs: [(name: String, value: String)] = [] }
        let collected = Collected()
        withExtendedLifetime(collected) {
            _ = MHD_get_connection_values(connection, MHD_ValueKind.GET_ARGUMENT_KIND, { context, _, key, value in
                guard let context, let key else { return MHD_Result.YES }
                let collected = Unmanaged<Collected>.fromOpaque(context).takeUnretainedValue()
                let decode = { (raw: UnsafePointer<CChar>) -> String in
                    let text = String(cString: raw).replacingPlus()
                    return percentDecoded(Substring(text)) ?? text
                }
                collected.pairs.append((decode(key), value.map(decode) ?? ""))
                return MHD_Result.YES
            }, Unmanaged.passUnretained(collected).toOpaque())
        }
        return collected.pairs
    }

    /// Stops serving and closes the listening socket.
    public func stop() {
        // Streams end first: libmicrohttpd waits for their connections' threads.
        for stream in streams.withLock({ $0 }) { stream.end() }
        if let daemon { MHD_stop_daemon(daemon) }
        daemon = nil
        deadlines.stop()
        logTarget?.deallocate()
        logTarget = nil
    }

    /// Per-request state while the body arrives.
    final class Exchange {
        var body: [UInt8] = []
        var tooLarge = false
        var unauthorized = false
    }

    /// Whether the request carries the bearer token (when one is required).
    /// The comparison takes the same time wherever the first difference is.
    fileprivate func authorized(_ connection: OpaquePointer) -> Bool {
        guard let token else { return true }
        guard let header = cmhd_header(connection, "Authorization").map({ String(cString: $0) }) else { return false }
        let expected = Array("Bearer \(token)".utf8)
        let given = Array(header.utf8)
        guard given.count == expected.count else { return false }
        var difference: UInt8 = 0
        for index in expected.indices { difference |= expected[index] ^ given[index] }
        return difference == 0
    }

    fileprivate func respond(_ connection: OpaquePointer, _ response: HTTPResponse) -> MHD_Result {
        let reply: OpaquePointer?
        if let stream = response.stream {
            streams.withLock { streams in
                streams.removeAll { $0.isEnded }
                streams.append(stream)
            }
            reply = MHD_create_response_from_callback(
                stream.length ?? UInt64.max, stream.length == nil ? 4096 : 256 * 1024, streamReader,
                Unmanaged.passRetained(StreamBox(stream)).toOpaque(), streamRelease)
        } else {
            reply = response.body.withUnsafeBytes { raw in
                MHD_create_response_from_buffer(raw.count, UnsafeMutableRawPointer(mutating: raw.baseAddress), mustCopy)
            }
        }
        guard let reply else {
            response.stream?.end()
            return MHD_Result.NO
        }
        if response.stream != nil { cmhd_set_connection_timeout(connection, Self.responseIdleSeconds) }
        if let type = response.contentType { MHD_add_response_header(reply, "Content-Type", type) }
        for (name, value) in response.headers { MHD_add_response_header(reply, name, value) }
        let result = MHD_queue_response(connection, UInt32(response.status), reply)
        MHD_destroy_response(reply)
        return result
    }

    /// Answers a request whose body has arrived, with one log line (debug)
    /// for it: method, path, status and the time taken to answer (for a
    /// stream, to start answering).
    fileprivate func handle(_ connection: OpaquePointer, method: String, path: String, exchange: Exchange) -> MHD_Result {
        // The request is in: from here the connection may take as long as
        // answering needs (a slow commit, a long response), not the request
        // timeout, which bounds only receiving it.
        deadlines.requestReceived(connection)
        let started = ContinuousClock.now
        let response = answer(connection, method: method, path: path, exchange: exchange)
        log.debug("HTTP API: \(method) \(path) \(response.status) \(milliseconds(ContinuousClock.now - started)) ms")
        return respond(connection, response)
    }

    private func answer(_ connection: OpaquePointer, method: String, path: String, exchange: Exchange) -> HTTPResponse {
        if exchange.unauthorized {
            return Router.problem(Problem(
                .unauthorized,
                detail: "this listener needs 'Authorization: Bearer <token>' (the token is in the daemon's api.token file)"))
        }
        if exchange.tooLarge {
            return Router.problem(Problem(
                .payloadTooLarge,
                detail: "request body is larger than \(Self.maximumBodySize) bytes"))
        }
        let contentType = cmhd_header(connection, "Content-Type").map { String(cString: $0) }
        var request = HTTPRequest(method: method, path: path, contentType: contentType,
                                  query: Self.query(connection), body: exchange.body)
        request.accept = cmhd_header(connection, "Accept").map { String(cString: $0) }
        request.lastEventID = cmhd_header(connection, "Last-Event-ID").map { String(cString: $0) }
        request.range = cmhd_header(connection, "Range").map { String(cString: $0) }
        let fd = cmhd_connection_fd(connection)
        request.connection = HTTPConnectionContext(eventStreams: eventStreams, clientLeft: { Self.peerClosed(fd) })
        return router.handle(request)
    }

    /// Whether the peer of `fd` has closed the connection (or reset it).
    /// Only asked from the connection's own thread, while the socket is open.
    private static func peerClosed(_ fd: Int32) -> Bool {
        guard fd >= 0 else { return false }
        var entry = pollfd(fd: fd, events: Int16(POLLRDHUP), revents: 0)
        guard poll(&entry, 1, 0) == 1 else { return false }
        return entry.revents & Int16(POLLRDHUP | POLLHUP | POLLERR) != 0
    }

    /// A connection opened or closed (libmicrohttpd's main thread).
    fileprivate func connection(_ connection: OpaquePointer, opened: Bool) {
        if opened {
            deadlines.opened(connection, fd: cmhd_connection_fd(connection))
        } else {
            deadlines.closed(connection)
        }
    }

    /// A response was sent (or the request aborted): the connection waits
    /// for its next request with the request timeout.
    fileprivate func requestCompleted(_ connection: OpaquePointer) {
        deadlines.responseSent(connection)
        cmhd_set_connection_timeout(connection, UInt32(limits.httpRequestTimeoutSeconds))
    }
}

/// libmicrohttpd calls this first with the headers, then once per piece of
/// body, then once more with nothing: that last call answers.
private let accessHandler: MHD_AccessHandlerCallback = { context, connection, url, method, _, uploadData, uploadSize, state in
    guard let context, let connection, let state, let uploadSize else { return MHD_Result.NO }
    let server = Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue()
    guard let existing = state.pointee else {
        let exchange = HTTPServer.Exchange()
        exchange.unauthorized = !server.authorized(connection)
        if let length = cmhd_header(connection, "Content-Length").flatMap({ Int(String(cString: $0)) }),
           length > HTTPServer.maximumBodySize {
            exchange.tooLarge = true
        }
        state.pointee = Unmanaged.passRetained(exchange).toOpaque()
        return MHD_Result.YES
    }
    let exchange = Unmanaged<HTTPServer.Exchange>.fromOpaque(existing).takeUnretainedValue()
    if uploadSize.pointee > 0 {
        if let uploadData, !exchange.tooLarge {
            if exchange.body.count + uploadSize.pointee > HTTPServer.maximumBodySize {
                exchange.tooLarge = true
                exchange.body = []
            } else {
                uploadData.withMemoryRebound(to: UInt8.self, capacity: uploadSize.pointee) {
                    exchange.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: uploadSize.pointee))
                }
            }
        }
        uploadSize.pointee = 0
        return MHD_Result.YES
    }
    let methodName = method.map { String(cString: $0) } ?? ""
    let path = url.map { String(cString: $0) } ?? "/"
    return server.handle(connection, method: methodName, path: path, exchange: exchange)
}

/// Releases the per-request state when libmicrohttpd is done with a request.
private let completedHandler: MHD_RequestCompletedCallback = { context, connection, state, _ in
    if let context, let connection {
        Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue().requestCompleted(connection)
    }
    guard let state, let existing = state.pointee else { return }
    Unmanaged<HTTPServer.Exchange>.fromOpaque(existing).release()
    state.pointee = nil
}

private let connectionHandler: MHD_NotifyConnectionCallback = { context, connection, _, event in
    guard let context, let connection else { return }
    let server = Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue()
    server.connection(connection, opened: event == connectionStarted)
}

private let logHandler: cmhd_log_callback = { context, format, message in
    guard let context, let format, let message else { return }
    Unmanaged<HTTPServer>.fromOpaque(context).takeUnretainedValue()
        .libraryMessage(format: String(cString: format), String(cString: message))
}

/// MHD_CONNECTION_NOTIFY_STARTED, as `mustCopy` below.
private let connectionStarted = MHD_ConnectionNotificationCode(rawValue: 0)!  // invariant: a case of the closed enum

/// MHD_RESPMEM_MUST_COPY: the importer's name for the case varies between
/// libmicrohttpd versions, its value (2) does not.
private let mustCopy = MHD_ResponseMemoryMode(rawValue: 2)!  // invariant: a case of the closed enum

/// `duration` in milliseconds with three decimals ("0.412").
private func milliseconds(_ duration: Duration) -> String {
    let (seconds, attoseconds) = duration.components
    let microseconds = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
    let fraction = String(microseconds % 1000)
    return "\(microseconds / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
}

extension String {
    fileprivate func replacingPlus() -> String {
        String(map { $0 == "+" ? " " : $0 })
    }
}

/// Fills libmicrohttpd's buffer from an event stream (blocking until events
/// or a keep-alive); -1 (MHD_CONTENT_READER_END_OF_STREAM) ends it.
/// Holds a stream for libmicrohttpd's context pointer.
private final class StreamBox {
    let stream: any ResponseStream
    init(_ stream: any ResponseStream) { self.stream = stream }
}

private let streamReader: MHD_ContentReaderCallback = { context, _, buffer, maximum in
    guard let context, let buffer else { return -1 }
    let stream = Unmanaged<StreamBox>.fromOpaque(context).takeUnretainedValue().stream
    guard let count = stream.read(into: UnsafeMutableRawPointer(buffer), maximum: maximum), count > 0 else { return -1 }
    return count
}

private let streamRelease: MHD_ContentReaderFreeCallback = { context in
    guard let context else { return }
    let box = Unmanaged<StreamBox>.fromOpaque(context)
    box.takeUnretainedValue().stream.end()
    box.release()
}
