/// The body of `GET /v1/health`.
struct Health: Decodable, Sendable {
    /// `ok` when the daemon is serving.
    var status: String
}

/// The body of `GET /v1/version`.
struct ServerVersion: Decodable, Sendable {
    /// The daemon's release, e.g. `0.1.0`.
    var version: String
    /// The API revision, e.g. `v1`.
    var api: String
    /// The I/O engine the daemon runs, e.g. `io_uring`.
    var engine: String
}
