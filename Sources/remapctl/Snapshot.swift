import RemapWire
/// A read-only, point-in-time image of a volume, as the API describes it.
///
/// Commands address it by ``id`` or as `VOLUME@NAME`; NBD clients read it
/// under ``exportName``.
struct Snapshot: Decodable, Equatable, Sendable {
    var id: String
    /// Unique among the snapshots of ``volume``.
    var name: String
    var volume: String
    var pool: String
    /// The volume's size when the snapshot was taken.
    var sizeBytes: Int
    /// RFC 3339 text, shown as received.
    var createdAt: String
    /// `VOLUME@NAME`, the read-only NBD export.
    var exportName: String
    /// What deleting the snapshot would give back: chunks only it maps.
    var uniqueBytes: Int
    /// Mapped chunks that a volume, clone or other snapshot maps too.
    var sharedBytes: Int
    /// Copy-on-write space held so that writes to the volume's range
    /// reservations cannot fail; 0 without range reservations.
    var reservedBytes: Int

    /// How commands and tables name it: `VOLUME@NAME`.
    var address: String { "\(volume)@\(name)" }
}

/// The body of `GET /v1/snapshots` and `GET /v1/volumes/{name}/snapshots`.
struct SnapshotList: Decodable, Sendable {
    var snapshots: [Snapshot]
}

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

/// The body of `GET /v1/snapshots/{id}/changes`: where a snapshot differs
/// from a base, or without a base where it holds data.
struct SnapshotChanges: Decodable, Sendable {
    /// The snapshot's ID.
    var snapshot: String
    /// The base's ID; `nil` when the ranges are those holding data.
    var base: String?
    var sizeBytes: Int
    /// The ranges are whole multiples of this (the pool's chunk size),
    /// except where the image ends.
    var granularityBytes: Int
    /// The sum of the ranges' lengths.
    var changedBytes: Int
    /// Sorted, merged and non-overlapping.
    var ranges: [ByteRange]
}

/// `lengthBytes` bytes from `offsetBytes` of an image.
struct ByteRange: Codable, Equatable, Sendable {
    var offsetBytes: Int
    var lengthBytes: Int

    /// One past the last byte.
    var endBytes: Int { offsetBytes + lengthBytes }
}

extension Snapshot: Detailed {
    /// The snapshot as `remapctl snapshot show` prints it.
    var details: String {
        var fields = FieldList()
        fields.append("snapshot", address)
        fields.append("id", id)
        fields.append("volume", volume)
        fields.append("pool", pool)
        fields.append("size", Output.size(sizeBytes))
        fields.append("unique", Output.size(uniqueBytes))
        fields.append("shared", Output.size(sharedBytes))
        fields.append("reserved", Output.size(reservedBytes))
        fields.append("created", createdAt)
        fields.append("export", exportName)
        return fields.rendered()
    }

    /// `SNAPSHOT ID SIZE UNIQUE SHARED RESERVED CREATED`, in the order given.
    static func table(_ snapshots: [Snapshot]) -> String {
        var table = Table([
            .init(title: "SNAPSHOT"),
            .init(title: "ID"),
            .init(title: "SIZE", alignment: .right),
            .init(title: "UNIQUE", alignment: .right),
            .init(title: "SHARED", alignment: .right),
            .init(title: "RESERVED", alignment: .right),
            .init(title: "CREATED"),
        ])
        for snapshot in snapshots {
            table.append([
                snapshot.address,
                snapshot.id,
                ByteSize.format(snapshot.sizeBytes),
                ByteSize.format(snapshot.uniqueBytes),
                ByteSize.format(snapshot.sharedBytes),
                ByteSize.format(snapshot.reservedBytes),
                snapshot.createdAt,
            ])
        }
        return table.rendered()
    }
}

extension SnapshotChanges {
    /// `OFFSET LENGTH SIZE` per range (offset and length in bytes), then a
    /// line with the total, e.g.
    /// `total: 3 ranges, 192 KiB (196608 bytes) of 1.0 GiB may differ from vm1@s1`.
    ///
    /// - Parameter base: How the user named the base, for the total line.
    func rendered(base baseName: String?) -> String {
        var table = Table([
            .init(title: "OFFSET", alignment: .right),
            .init(title: "LENGTH", alignment: .right),
            .init(title: "SIZE", alignment: .right),
        ])
        for range in ranges {
            table.append([String(range.offsetBytes), String(range.lengthBytes), ByteSize.format(range.lengthBytes)])
        }
        let count = "\(ranges.count) range\(ranges.count == 1 ? "" : "s")"
        let what = baseName.map { "may differ from \($0)" } ?? "mapped; the rest reads zeros"
        return table.rendered()
            + "total: \(count), \(Output.size(changedBytes)) of \(ByteSize.format(sizeBytes)) \(what)\n"
    }
}
