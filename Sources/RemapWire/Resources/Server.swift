/// The body of `GET /v1/health`.
public struct Health: Codable, Equatable, Sendable {
    /// `ok` when the daemon is serving.
    public var status: String

    public init(status: String) {
        self.status = status
    }
}

/// The body of `GET /v1/version`.
public struct ServerVersion: Codable, Equatable, Sendable {
    /// The daemon's release, e.g. `0.1.0`.
    public var version: String
    /// The API revision, e.g. `v1`.
    public var api: String
    /// The I/O engine the daemon runs, e.g. `io_uring`.
    public var engine: String

    public init(version: String, api: String, engine: String) {
        self.version = version
        self.api = api
        self.engine = engine
    }
}
