/// A read-only, point-in-time image of a volume, as the API describes it.
///
/// Commands address it by ``id`` or as `VOLUME@NAME`; NBD clients read it
/// under ``exportName``.
public struct Snapshot: Decodable, Equatable, Sendable {
    public var id: String
    /// Unique among the snapshots of ``volume``.
    public var name: String
    public var volume: String
    public var pool: String
    /// The volume's size when the snapshot was taken.
    public var sizeBytes: Int
    /// RFC 3339 text, shown as received.
    public var createdAt: String
    /// `VOLUME@NAME`, the read-only NBD export.
    public var exportName: String
    /// What deleting the snapshot would give back: chunks only it maps.
    public var uniqueBytes: Int
    /// Mapped chunks that a volume, clone or other snapshot maps too.
    public var sharedBytes: Int
    /// Copy-on-write space held so that writes to the volume's range
    /// reservations cannot fail; 0 without range reservations.
    public var reservedBytes: Int

    /// How commands and tables name it: `VOLUME@NAME`.
    public var address: String { "\(volume)@\(name)" }
}

/// The body of `GET /v1/snapshots/{id}/changes`: where a snapshot differs
/// from a base, or without a base where it holds data.
public struct SnapshotChanges: Decodable, Sendable {
    /// The snapshot's ID.
    public var snapshot: String
    /// The base's ID; `nil` when the ranges are those holding data.
    public var base: String?
    public var sizeBytes: Int
    /// The ranges are whole multiples of this (the pool's chunk size),
    /// except where the image ends.
    public var granularityBytes: Int
    /// The sum of the ranges' lengths.
    public var changedBytes: Int
    /// Sorted, merged and non-overlapping.
    public var ranges: [ByteRange]
}

/// `lengthBytes` bytes from `offsetBytes` of an image.
public struct ByteRange: Codable, Equatable, Sendable {
    public var offsetBytes: Int
    public var lengthBytes: Int

    public init(offsetBytes: Int, lengthBytes: Int) {
        self.offsetBytes = offsetBytes
        self.lengthBytes = lengthBytes
    }

    /// One past the last byte.
    public var endBytes: Int { offsetBytes + lengthBytes }
}
