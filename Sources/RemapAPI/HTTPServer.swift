import CMicroHTTPD
import Glibc
import RemapCore
import Synchronization

/// The REST server: libmicrohttpd on one listening socket (unix or TCP),
/// one thread per connection, every request handed to a `Router`.
public final class HTTPServer: Sendable {
    /// Bodies larger than this are refused with 413.
    public static let maximumBodySize = 1 << 20

    private let router: Router
    /// Event streams being served, so stopping can end them.
    private let streams = Mutex<[any ResponseStream]>([])
    /// When set, every request needs `Authorization: Bearer <token>` (TCP).
    private let token: String?
    // The daemon handle is set once in start() and cleared in stop(), both
    // from the daemon's main thread.
    private nonisolated(unsafe) var daemon: OpaquePointer?

    public init(router: Router, token: String? = nil) {
        self.router = router
        self.token = token
    }

    /// Starts serving on `listenFD` (bound and listening already).
    public func start(listenFD: Int32, connectionLimit: UInt32 = 256, timeoutSeconds: UInt32 = 60) throws(RemapError) {
        let context = Unmanaged.passUnretained(self).toOpaque()
        guard let started = cmhd_start(listenFD, connectionLimit, timeoutSeconds, accessHandler, context, completedHandler, nil) else {
            throw .io(errno: errno, context: "starting the REST server")
        }
        daemon = started
    }

    /// Stops serving and closes the listening socket.
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

    public func stop() {
        // Streams end first: libmicrohttpd waits for their connections' threads.
        for stream in streams.withLock({ $0 }) { stream.end() }
        if let daemon { MHD_stop_daemon(daemon) }
        daemon = nil
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
        guard let reply else { return MHD_Result.NO }
        if let type = response.contentType { MHD_add_response_header(reply, "Content-Type", type) }
        for (name, value) in response.headers { MHD_add_response_header(reply, name, value) }
        let result = MHD_queue_response(connection, UInt32(response.status), reply)
        MHD_destroy_response(reply)
        return result
    }

    fileprivate func handle(_ connection: OpaquePointer, method: String, path: String, exchange: Exchange) -> MHD_Result {
        if exchange.unauthorized {
            return respond(connection, Router.problem(Problem(
                status: 401, code: "unauthorized", title: "Unauthorized",
                detail: "this listener needs 'Authorization: Bearer <token>' (the token is in the daemon's api.token file)")))
        }
        if exchange.tooLarge {
            return respond(connection, Router.problem(Problem(
                status: 413, code: "payload-too-large", title: "Payload too large",
                detail: "request body is larger than \(Self.maximumBodySize) bytes")))
        }
        let contentType = cmhd_header(connection, "Content-Type").map { String(cString: $0) }
        var request = HTTPRequest(method: method, path: path, contentType: contentType,
                                  query: Self.query(connection), body: exchange.body)
        request.accept = cmhd_header(connection, "Accept").map { String(cString: $0) }
        request.lastEventID = cmhd_header(connection, "Last-Event-ID").map { String(cString: $0) }
        request.range = cmhd_header(connection, "Range").map { String(cString: $0) }
        return respond(connection, router.handle(request))
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
private let completedHandler: MHD_RequestCompletedCallback = { _, _, state, _ in
    guard let state, let existing = state.pointee else { return }
    Unmanaged<HTTPServer.Exchange>.fromOpaque(existing).release()
    state.pointee = nil
}

/// MHD_RESPMEM_MUST_COPY: the importer's name for the case varies between
/// libmicrohttpd versions, its value (2) does not.
private let mustCopy = MHD_ResponseMemoryMode(rawValue: 2)!  // invariant: a case of the closed enum

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
