import RemapWire
extension Event {
    /// What the event is about: `pool/volume`, `pool`, `volume`, or `-`.
    var subject: String {
        switch (pool, volume) {
        case let (pool?, volume?): "\(pool)/\(volume)"
        case let (pool?, nil): pool
        case let (nil, volume?): volume
        case (nil, nil): "-"
        }
    }

    /// The server's detail, followed by the structured fields it does not
    /// mention, so that grep finds them.
    var explanation: String {
        // Runs of blanks folded, so that two spaces keep separating columns.
        let text = (detail ?? "").split(whereSeparator: \.isWhitespace).joined(separator: " ")
        var facts: [String] = []
        if let percent, !text.contains("\(Self.number(percent))%") {
            facts.append("percent=\(Self.number(percent))")
        }
        if let reservation, !text.contains(reservation) {
            facts.append("reservation=\(reservation)")
        }
        if let offsetBytes, !text.contains(String(offsetBytes)) {
            facts.append("offset=\(offsetBytes)")
        }
        let parts = (text.isEmpty ? [] : [text]) + (facts.isEmpty ? [] : ["[" + facts.joined(separator: " ") + "]"])
        return parts.isEmpty ? "-" : parts.joined(separator: " ")
    }

    /// One line for `remapctl events --follow`: the table's columns, with the
    /// type padded so consecutive lines mostly line up.
    var line: String {
        let paddedType = type.count >= 20 ? type : type + String(repeating: " ", count: 20 - type.count)
        return "\(seq)  \(time)  \(paddedType)  \(subject)  \(explanation)"
    }

    /// `SEQ TIME TYPE POOL/VOLUME DETAIL`, oldest first.
    static func table(_ events: [Event]) -> String {
        var table = Table([
            .init(title: "SEQ", alignment: .right),
            .init(title: "TIME"),
            .init(title: "TYPE"),
            .init(title: "POOL/VOLUME"),
            .init(title: "DETAIL"),
        ])
        for event in events.sorted(by: { $0.seq < $1.seq }) {
            table.append([String(event.seq), event.time, event.type, event.subject, event.explanation])
        }
        return table.rendered()
    }

    /// `90` for whole numbers, else one decimal: `92.5`.
    private static func number(_ value: Double) -> String {
        guard value.isFinite else { return "-" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int(value)) }
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(abs(tenths % 10))"
    }
}
