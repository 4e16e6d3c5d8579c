/// The bounds that keep one client from exhausting remapd: set by flags,
/// reported by `GET /v1/limits`. Each is enforced by the mechanism it
/// bounds (the NBD connection, the HTTP server, the pool), never by a
/// special case for one request.
public struct Limits: Codable, Sendable, Equatable {
    // NBD
    /// Connections served at once (unix and TCP together); one more is closed at once.
    public var nbdMaxConnections: Int = 1024
    /// Reply bytes queued on one connection before remapd stops reading its
    /// requests (it resumes as the client reads the replies).
    public var nbdReplyQueueBytes: UInt64 = 64 << 20
    /// Options one client may send before it chooses an export.
    public var nbdMaxOptions: Int = 16384
    /// Seconds a client may take to choose an export.
    public var nbdHandshakeTimeoutSeconds: Int = 30
    /// Seconds a request's payload (a WRITE's data) may stay incomplete.
    public var nbdRequestTimeoutSeconds: Int = 30
    /// Seconds a reply may wait with the client taking none of its bytes.
    public var nbdReplyTimeoutSeconds: Int = 60

    // HTTP
    /// HTTP connections served at once, per listener.
    public var httpMaxConnections: Int = 512
    /// HTTP connections from one IP address at once (TCP listener).
    public var httpMaxConnectionsPerIP: Int = 32
    /// Seconds a client may take to send a complete request (and idle
    /// between requests on a kept-alive connection).
    public var httpRequestTimeoutSeconds: Int = 10
    /// Event streams (`GET /v1/events` followers) open at once, per listener.
    public var httpMaxEventStreams: Int = 64

    // Pools
    /// Chunks one pool may have (capacity / chunk size); a larger pool or
    /// supplier is refused with 400 invalid-argument.
    public var maxChunksPerPool: UInt64 = 1 << 28

    public init() {}
}
