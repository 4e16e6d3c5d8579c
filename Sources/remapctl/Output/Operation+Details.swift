import RemapWire

extension Operation: Detailed {
    /// `42%`, or `-` when remapd gives no progress.
    var percent: String {
        guard let fraction = progress ?? doneFraction, fraction.isFinite else { return "-" }
        return "\(Int((min(max(fraction, 0), 1) * 100).rounded(.down)))%"
    }

    private var doneFraction: Double? {
        guard let doneBytes, let totalBytes, totalBytes > 0 else { return nil }
        return Double(doneBytes) / Double(totalBytes)
    }

    /// The operation as `remapctl operation show` prints it.
    var details: String {
        var fields = FieldList()
        fields.append("id", id)
        fields.append("kind", kind)
        fields.append("state", state)
        fields.append("volume", volume ?? "-")
        fields.append("source", source ?? "-")
        fields.append("progress", percent)
        fields.append("done", doneBytes.map(Output.size) ?? "-")
        fields.append("total", totalBytes.map(Output.size) ?? "-")
        fields.append("created", createdAt ?? "-")
        fields.append("finished", finishedAt ?? "-")
        if let error {
            fields.append("error", error.summary(httpStatus: error.statusOr500, reason: ""))
        }
        return fields.rendered()
    }

    /// `ID KIND STATE VOLUME PROGRESS CREATED SOURCE`, in the order given
    /// (remapd lists the newest first).
    static func table(_ operations: [Operation]) -> String {
        var table = Table([
            .init(title: "ID"),
            .init(title: "KIND"),
            .init(title: "STATE"),
            .init(title: "VOLUME"),
            .init(title: "PROGRESS", alignment: .right),
            .init(title: "CREATED"),
            .init(title: "SOURCE"),
        ])
        for operation in operations {
            table.append([
                operation.id, operation.kind, operation.state, operation.volume ?? "-", operation.percent,
                operation.createdAt ?? "-", operation.source ?? "-",
            ])
        }
        return table.rendered()
    }
}
