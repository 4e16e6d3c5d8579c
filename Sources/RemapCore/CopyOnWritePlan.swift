/// The copy-on-write space a volume's range reservations hold so that all
/// of their range stays writable once it shares data with a snapshot
/// (sticky space: copies inside the range draw on it first, see `ChunkDraw`).
/// Deciding it is pure; the engine executes the plan (pool counts, rows).
public struct CopyOnWritePlan {
    /// Existing copy-on-write reservations and the chunks each is to hold
    /// (`Reservation.held`: counting those owed back by failed copies).
    public var resize: [(sticky: Reservation, held: UInt64)] = []
    /// Copy-on-write reservations to create: for which range, how many chunks.
    public var create: [(range: Reservation, chunks: UInt64)] = []
    /// Copy-on-write reservations whose range reservation is gone.
    public var release: [Reservation] = []

    /// Chunks the plan takes out of unreserved free space (what a caller
    /// checks before a plan that only grows).
    public var growth: UInt64 {
        resize.reduce(0) { $0 + ($1.held > $1.sticky.held ? $1.held - $1.sticky.held : 0) }
            + create.reduce(0) { $0 + $1.chunks }
    }
}

extension Volume {
    /// The live copy-on-write reservation held for range reservation `range`.
    public func stickySpace(for range: Reservation) -> Reservation? {
        reservations.first { $0.role == .copyOnWrite && $0.name == range.id && !$0.released }
    }

    /// Copy-on-write chunks each live range reservation must hold: one per
    /// chunk of its range that holds data shared with another image. With
    /// `assumingAllShared` (a snapshot is being taken: everything written
    /// becomes shared) every mapped chunk not reserved-unwritten counts.
    public func copyOnWriteNeeds(assumingAllShared: Bool) -> [(range: Reservation, chunks: UInt64)] {
        var needs: [(Reservation, UInt64)] = []
        for reservation in reservations where !reservation.released {
            guard let range = reservation.range else { continue }
            var count: UInt64 = 0
            if assumingAllShared {
                count = map.mappedCount(in: range) - reservation.remaining
            } else {
                for chunk in range where !reservation.isUnwritten(chunk) {
                    if let physical = map.lookup(chunk), isShared(chunk, physical) { count += 1 }
                }
            }
            needs.append((reservation, count))
        }
        return needs
    }

    /// What setting the copy-on-write reservations to `needs` takes: with
    /// `growOnly` each grows to its need (none shrinks; missing ones are
    /// created), without it each shrinks to its need (none grows or is
    /// created). Either way those whose range reservation is not among
    /// `needs` go.
    public func copyOnWritePlan(_ needs: [(range: Reservation, chunks: UInt64)], growOnly: Bool) -> CopyOnWritePlan {
        var plan = CopyOnWritePlan()
        for (range, chunks) in needs {
            if let sticky = stickySpace(for: range) {
                // What it holds counts the chunks failed copies owe it back.
                let target = growOnly ? max(sticky.held, chunks) : min(sticky.held, chunks)
                if target != sticky.held { plan.resize.append((sticky, target)) }
            } else if chunks > 0 && growOnly {
                plan.create.append((range, chunks))
            }
        }
        let live = Set(needs.map(\.range.id))
        plan.release = reservations.filter { $0.role == .copyOnWrite && !$0.released && !live.contains($0.name ?? "") }
        return plan
    }
}
