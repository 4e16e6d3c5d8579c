import RemapWire

extension Pool: Detailed {
    /// Space promised or taken: what the low-space thresholds measure.
    var committedBytes: Int { allocatedBytes + (reservedBytes ?? 0) }

    /// The thresholds as typed on the command line, `80,90,95`; `none` when
    /// the pool has none, `-` when the daemon does not say.
    var thresholdSummary: String {
        guard let lowSpaceThresholds else { return "-" }
        guard !lowSpaceThresholds.isEmpty else { return "none" }
        return lowSpaceThresholds.map(String.init).joined(separator: ",")
    }

    /// The thresholds for `pool show`: `80%, 90%, 95% committed`.
    var thresholdsInWords: String {
        guard let lowSpaceThresholds else { return "-" }
        guard !lowSpaceThresholds.isEmpty else { return "none" }
        return lowSpaceThresholds.map { "\($0)%" }.joined(separator: ", ") + " committed"
    }

    /// The pool as `remapctl pool show` prints it.
    var details: String {
        var fields = FieldList()
        fields.append("name", name)
        fields.append("state", state.map { state in stateReason.map { "\(state): \($0)" } ?? state } ?? "-")
        fields.append("chunk size", Output.size(chunkSizeBytes))
        fields.append("capacity", Output.size(capacityBytes))
        fields.append("allocated", Output.size(allocatedBytes))
        fields.append("reserved", reservedBytes.map(Output.size) ?? "-")
        fields.append("free", Output.size(freeBytes))
        fields.append("used", Output.percentage(allocatedBytes, of: capacityBytes))
        fields.append("committed", Output.percentage(committedBytes, of: capacityBytes))
        fields.append("volumes", String(volumeCount))
        fields.append("provisioned", Output.size(provisionedBytes))
        fields.append("overcommit", Output.ratio(overcommitRatio))
        fields.append("on no space", onNoSpace.map(\.explanation) ?? "-")
        fields.append("low-space at", thresholdsInWords)
        fields.append("suppliers", suppliers.isEmpty ? "none" : String(suppliers.count))
        var text = fields.rendered()
        if !suppliers.isEmpty {
            var table = Table([
                .init(title: "ID"),
                .init(title: "KIND"),
                .init(title: "SIZE", alignment: .right),
                .init(title: "PREALLOCATED"),
                .init(title: "STATE"),
                .init(title: "PATH"),
            ])
            for supplier in suppliers {
                let preallocated = supplier.preallocated.map { $0 ? "yes" : "no" } ?? "-"
                table.append([
                    supplier.id, supplier.kind, ByteSize.format(supplier.sizeBytes), preallocated, supplier.state ?? "-",
                    supplier.path,
                ])
            }
            text += table.rendered(indent: "  ")
            for supplier in suppliers {
                if let error = supplier.error { text += "  \(supplier.path): \(error)\n" }
            }
        }
        return text
    }

    /// `NAME STATE CHUNK CAPACITY …` for pools, sorted by name.
    static func table(_ pools: [Pool]) -> String {
        var table = Table([
            .init(title: "NAME"),
            .init(title: "STATE"),
            .init(title: "CHUNK", alignment: .right),
            .init(title: "CAPACITY", alignment: .right),
            .init(title: "ALLOCATED", alignment: .right),
            .init(title: "RESERVED", alignment: .right),
            .init(title: "FREE", alignment: .right),
            .init(title: "USED%", alignment: .right),
            .init(title: "COMMITTED%", alignment: .right),
            .init(title: "VOLUMES", alignment: .right),
            .init(title: "PROVISIONED", alignment: .right),
            .init(title: "OVERCOMMIT", alignment: .right),
            .init(title: "ON-NO-SPACE"),
            .init(title: "THRESHOLDS"),
        ])
        for pool in pools.sorted(by: { $0.name < $1.name }) {
            table.append([
                pool.name,
                pool.state ?? "-",
                ByteSize.format(pool.chunkSizeBytes),
                ByteSize.format(pool.capacityBytes),
                ByteSize.format(pool.allocatedBytes),
                pool.reservedBytes.map { ByteSize.format($0) } ?? "-",
                ByteSize.format(pool.freeBytes),
                Output.percentage(pool.allocatedBytes, of: pool.capacityBytes),
                Output.percentage(pool.committedBytes, of: pool.capacityBytes),
                String(pool.volumeCount),
                ByteSize.format(pool.provisionedBytes),
                Output.ratio(pool.overcommitRatio),
                pool.onNoSpace?.description ?? "-",
                pool.thresholdSummary,
            ])
        }
        return table.rendered()
    }
}
