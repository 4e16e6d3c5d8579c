/// Where a write's next new chunk comes from: the decision behind the
/// documented draw order (README, "Reservations"). The engine takes the
/// chunk itself (it may have to wait for one to be prepared) and records
/// the draw; this only says which account pays for it.
public enum ChunkDraw: Equatable {
    /// Draw on this reservation: it has chunks left.
    case reservation(Reservation)
    /// Take one of the pool's unreserved free chunks.
    case unreserved
    /// No space for it (or metadata is short: no new chunk at all).
    case none

    /// The next chunk of a write to `volume` at virtual chunk `virtual`:
    /// a copy on write inside a range reservation draws first on the
    /// copy-on-write space a snapshot set aside for that range (sticky),
    /// then on `drawOn` (see `Volume.drawOrder(bound:)`) in order, skipping
    /// released and spent reservations, then on unreserved free space.
    public static func next(for volume: Volume, virtual: UInt64, copyOnWrite: Bool, drawOn: [Reservation],
                            unreservedFreeChunks: UInt64, metadataShort: Bool) -> ChunkDraw {
        guard !metadataShort else { return .none }
        let sticky = copyOnWrite ? volume.copyOnWriteReservations(covering: virtual) : []
        if let reservation = (sticky + drawOn).first(where: { !$0.released && $0.remaining > 0 }) {
            return .reservation(reservation)
        }
        return unreservedFreeChunks > 0 ? .unreserved : .none
    }

    public static func == (a: ChunkDraw, b: ChunkDraw) -> Bool {
        switch (a, b) {
        case (.reservation(let x), .reservation(let y)): x === y
        case (.unreserved, .unreserved), (.none, .none): true
        default: false
        }
    }
}

extension Volume {
    /// The pooled reservations a write through an export bound to `bound`
    /// (a reservation id) draws on, in order: the bound one, then the
    /// volume's default reservation.
    public func drawOrder(bound: String?) -> [Reservation] {
        var drawOn: [Reservation] = []
        if let bound, let reservation = reservations.first(where: { $0.id == bound && $0.kind == .pooled }) {
            drawOn.append(reservation)
        }
        drawOn += reservations.filter { $0.role == .volumeDefault && $0.kind == .pooled }
        return drawOn
    }

    /// The copy-on-write reservations set aside for the live range
    /// reservations covering virtual chunk `virtual`.
    public func copyOnWriteReservations(covering virtual: UInt64) -> [Reservation] {
        let ranges = reservations.filter { $0.range?.contains(virtual) == true && !$0.released }.map(\.id)
        guard !ranges.isEmpty else { return [] }
        return reservations.filter { $0.role == .copyOnWrite && ranges.contains($0.name ?? "") }
    }
}
