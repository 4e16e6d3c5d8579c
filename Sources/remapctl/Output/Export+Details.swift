import RemapWire

extension Export {
    /// The export as `remapctl export create` prints it, with the URI NBD
    /// clients reach it by when `nbd` says where remapd's socket is.
    func details(nbd: NBDSocket) -> String {
        var fields = FieldList()
        fields.append("name", name)
        fields.append("volume", volume)
        fields.append("reservation", reservation ?? "none")
        fields.append("uri", nbd.uri(export: name) ?? "unknown")
        if let caveat = nbd.caveat { fields.append("note", caveat) }
        return fields.rendered()
    }

    /// `NAME VOLUME RESERVATION URI` for exports, sorted by name.
    static func table(_ exports: [Export], nbd: NBDSocket) -> String {
        var table = Table([
            .init(title: "NAME"),
            .init(title: "VOLUME"),
            .init(title: "RESERVATION"),
            .init(title: "URI"),
        ])
        for export in exports.sorted(by: { $0.name < $1.name }) {
            table.append([export.name, export.volume, export.reservation ?? "-", nbd.uri(export: export.name) ?? "-"])
        }
        return table.rendered()
    }
}
