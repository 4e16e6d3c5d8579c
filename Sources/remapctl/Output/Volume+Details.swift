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
}
