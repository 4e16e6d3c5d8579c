/// What reverting a volume to one of its snapshots does to the volume's
/// range reservations, decided before anything changes. Range reservations
/// stay whole: where the snapshot has a hole the chunk is reserved-unwritten
/// (the one it had, or a fresh one); where it has data, the chunk is shared
/// and needs copy-on-write space. The engine checks the space, then
/// executes the plan (maps, reservation bits, rows).
public struct RevertPlan {
    /// Reserved-unwritten chunks where the snapshot has a hole: mapped
    /// again after the volume takes the snapshot's map.
    public var keep: [(virtual: UInt64, physical: UInt64)] = []
    /// Written chunks of a range where the snapshot has a hole: each gets
    /// a fresh clean chunk, reserved-unwritten for `owner`.
    public var fresh: [(owner: Reservation, virtual: UInt64)] = []
    /// Reserved-unwritten chunks where the snapshot has data: they stop
    /// being reserved (the snapshot's data is what the volume reads).
    public var dropUnwritten: [(owner: Reservation, virtual: UInt64)] = []
    /// Chunks of the ranges where the snapshot has data (shared afterwards).
    public var sharedInRanges: UInt64 = 0
    /// Chunks of copy-on-write space the volume holds already.
    public var heldCopyOnWrite: UInt64 = 0

    /// Chunks the revert takes out of unreserved free space: the fresh
    /// chunks and the copy-on-write space not held yet.
    public var neededChunks: UInt64 {
        UInt64(fresh.count) + (sharedInRanges > heldCopyOnWrite ? sharedInRanges - heldCopyOnWrite : 0)
    }
}

extension Volume {
    /// Plans reverting this volume to `snapshot` (see `RevertPlan`); pure:
    /// nothing changes until the engine executes it. A chunk covered by two
    /// range reservations counts once (for the first).
    /// Throws `inUse` when the volume has range reservations and the
    /// snapshot another size (they would no longer fit it).
    public func revertPlan(to snapshot: Volume) throws(RemapError) -> RevertPlan {
        let ranges = reservations.filter { $0.range != nil && !$0.released }
        if !ranges.isEmpty && snapshot.sizeBytes != sizeBytes {
            throw .inUse("volume '\(name)' has range reservations and snapshot '\(snapshot.exportName)' has another size; release them before a revert")
        }
        var plan = RevertPlan()
        var seen = Set<UInt64>()
        for reservation in ranges {
            guard let range = reservation.range else { continue }
            for chunk in range where seen.insert(chunk).inserted {
                let inSnapshot = snapshot.map.lookup(chunk) != nil
                if let owner = unwrittenOwner(of: chunk) {
                    if inSnapshot {
                        plan.dropUnwritten.append((owner, chunk))
                    } else if let physical = map.lookup(chunk) {
                        plan.keep.append((chunk, physical))
                    }
                } else if !inSnapshot {
                    plan.fresh.append((reservation, chunk))
                }
                if inSnapshot { plan.sharedInRanges += 1 }
            }
        }
        plan.heldCopyOnWrite = reservations.filter { $0.role == .copyOnWrite && !$0.released }.reduce(0) { $0 + $1.held }
        return plan
    }
}
