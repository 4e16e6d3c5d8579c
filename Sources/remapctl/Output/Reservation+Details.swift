import RemapWire

extension Reservation: Detailed {
    /// When the lease ends, or `never` for a reservation without one.
    var expiry: String { expiresAt ?? "never" }

    /// The reservation as `remapctl reservation show` prints it.
    var details: String {
        var fields = FieldList()
        fields.append("id", id)
        fields.append("volume", volume)
        fields.append("name", name ?? "-")
        fields.append("kind", kind)
        if let offsetBytes {
            fields.append("offset", Output.size(offsetBytes))
        }
        if let lengthBytes {
            fields.append("length", Output.size(lengthBytes))
        }
        fields.append("size", Output.size(bytes))
        fields.append("used", Output.size(usedBytes))
        fields.append("remaining", Output.size(max(bytes - usedBytes, 0)))
        fields.append("lease", ttlSeconds.map { Seconds($0).description } ?? "none")
        fields.append("expires", expiry)
        return fields.rendered()
    }

    /// `ID NAME KIND SIZE USED EXPIRES` for reservations, ordered by name
    /// and then by ID so the list reads the same each time.
    static func table(_ reservations: [Reservation]) -> String {
        var table = Table([
            .init(title: "ID"),
            .init(title: "NAME"),
            .init(title: "KIND"),
            .init(title: "SIZE", alignment: .right),
            .init(title: "USED", alignment: .right),
            .init(title: "EXPIRES"),
        ])
        let ordered = reservations.sorted { ($0.name ?? "", $0.id) < ($1.name ?? "", $1.id) }
        for reservation in ordered {
            table.append([
                reservation.id,
                reservation.name.flatMap { $0.isEmpty ? nil : $0 } ?? "-",
                reservation.kind,
                ByteSize.format(reservation.bytes),
                ByteSize.format(reservation.usedBytes),
                reservation.expiry,
            ])
        }
        return table.rendered()
    }
}
