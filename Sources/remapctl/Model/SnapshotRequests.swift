/// The body of `POST /v1/volumes/{name}/snapshots`.
struct SnapshotSpec: Encodable, Sendable {
    var name: String
}

/// The body of `POST /v1/snapshots/{id}/clone`.
struct CloneSpec: Encodable, Sendable {
    /// The new volume's name.
    var name: String
    /// Left out when empty.
    var labels: Labels?
}

/// The body of `POST /v1/volumes/{name}/revert`.
struct RevertSpec: Encodable, Sendable {
    /// An ID, `VOLUME@NAME`, or just the name of one of the volume's snapshots.
    var snapshot: String
}
