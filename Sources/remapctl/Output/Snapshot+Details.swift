import RemapWire

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
