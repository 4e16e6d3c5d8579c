import RemapWire

extension Volume: Detailed {
    /// The volume as `remapctl volume show` prints it.
    var details: String {
        var fields = FieldList()
        fields.append("name", name)
        fields.append("id", id)
        fields.append("pool", pool)
        fields.append("size", Output.size(sizeBytes))
        fields.append("allocated", Output.size(allocatedBytes))
        fields.append("reserved", reservedBytes.map(Output.size) ?? "-")
        fields.append("guaranteed writable", guaranteedWritableBytes.map(Output.size) ?? "-")
        fields.append("created", createdAt)
        fields.append("export", exportName)
        fields.append("labels", labels.isEmpty ? "none" : Labels(labels).summary)
        if let originSnapshot {
            fields.append("origin snapshot", originSnapshot)
        }
        return fields.rendered()
    }

    /// `NAME POOL SIZE ALLOCATED CREATED EXPORT LABELS` for volumes, sorted
    /// by name.
    static func table(_ volumes: [Volume]) -> String {
        var table = Table([
            .init(title: "NAME"),
            .init(title: "POOL"),
            .init(title: "SIZE", alignment: .right),
            .init(title: "ALLOCATED", alignment: .right),
            .init(title: "CREATED"),
            .init(title: "EXPORT"),
            .init(title: "LABELS"),
        ])
        for volume in volumes.sorted(by: { $0.name < $1.name }) {
            table.append([
                volume.name,
                volume.pool,
                ByteSize.format(volume.sizeBytes),
                ByteSize.format(volume.allocatedBytes),
                volume.createdAt,
                volume.exportName,
                Labels(volume.labels).summary,
            ])
        }
        return table.rendered()
    }
}
