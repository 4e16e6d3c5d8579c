import RemapWire
/// Work remapd does in the background, such as importing a file into a new
/// volume, as the API describes it.
struct Operation: Decodable, Equatable, Sendable {
    var id: String
    /// `import`, or a kind newer than remapctl.
    var kind: String
    /// `running`, `succeeded` or `failed`.
    var state: String
    var volume: String?
    /// The file being imported.
    var source: String?
    var totalBytes: Int?
    var doneBytes: Int?
    /// 0.0 to 1.0.
    var progress: Double?
    /// RFC 3339 text, shown as received.
    var createdAt: String?
    var finishedAt: String?
    /// Why the operation failed.
    var error: Problem?

    var hasFailed: Bool { state == "failed" }

    /// Whether remapd is done with it. A state newer than remapctl counts
    /// as ended once the operation has a finish time.
    var hasEnded: Bool { state == "succeeded" || state == "failed" || finishedAt != nil }
}

/// The body of `GET /v1/operations`.
struct OperationList: Decodable, Sendable {
    var operations: [Operation]
}

/// The body of `POST /v1/volumes` that imports a file into a new volume.
struct VolumeImportSpec: Encodable, Sendable {
    /// Where the data comes from.
    struct Source: Encodable, Sendable {
        /// An absolute path on the daemon's host, under its supplier directory.
        var file: String
    }

    var name: String
    var source: Source
    /// The server picks "default" when omitted.
    var pool: String?
    /// The server takes the file's size, rounded up to 512, when omitted.
    var sizeBytes: Int?
    /// Left out when empty.
    var labels: Labels?
}

/// remapd's `202 Accepted` answer to an import: the operation to follow and
/// the volume, which exists at once but is busy until the import ends.
struct VolumeImport: Decodable, Sendable {
    var operation: Operation
    var volume: Volume
}

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
