/// A volume as the API describes it.
struct Volume: Decodable, Equatable, Sendable {
    var id: String
    var name: String
    /// The name of the pool the volume draws its chunks from.
    var pool: String
    /// The size the volume presents to its users.
    var sizeBytes: Int
    /// How much of the pool the volume actually holds; grows as it is written.
    var allocatedBytes: Int
    /// When the volume was created, as RFC 3339 text; shown as received.
    var createdAt: String
    /// The name under which the NBD server exports the volume.
    var exportName: String
}

/// The body of `POST /v1/volumes`.
struct VolumeSpec: Encodable, Sendable {
    var name: String
    var sizeBytes: Int
    /// The pool to draw from; the server picks "default" when omitted.
    var pool: String?
}

/// The body of `GET /v1/volumes`.
struct VolumeList: Decodable, Sendable {
    var volumes: [Volume]
}
