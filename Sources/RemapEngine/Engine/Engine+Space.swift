import CURing
import Glibc
import RemapCore
import RemapLog
import RemapStore

/// Honest space on the engine thread: reservations, the chunks writes draw
/// on, waiting for space, thresholds, leases, and exports bound to
/// reservations.
extension Engine {
    // MARK: - Writes drawing on reservations

    /// Where a write's new chunks come from: the pooled reservations it may
    /// draw on, then unreserved free space.
    final class WriteChunks: ChunkSource {
        /// The volume written (its range reservations make CoW space sticky).
        let volume: Volume
        var pool: Pool { volume.pool }
        let reservations: [Reservation]
        private(set) var taken: [(chunk: UInt64, reservation: Reservation?)] = []
        /// A chunk was there to draw but not prepared yet: wait, don't fail.
        private(set) var waitingForPreparation = false
        /// How many chunks the write had taken when the prepared ones ran
        /// out, plus one: the stash must grow to at least that for it.
        private(set) var wanted = 0
        let metadataShort: Bool

        init(volume: Volume, reservations: [Reservation], metadataShort: Bool) {
            self.volume = volume
            self.reservations = reservations
            self.metadataShort = metadataShort
        }

        func take(for virtual: UInt64, copyOnWrite: Bool) -> UInt64? {
            switch ChunkDraw.next(for: volume, virtual: virtual, copyOnWrite: copyOnWrite, drawOn: reservations,
                                  unreservedFreeChunks: pool.unreservedFreeChunks, metadataShort: metadataShort) {
            case .reservation(let reservation):
                guard let chunk = pool.takeChunk() else { return outOfPrepared() }
                _ = reservation.draw()
                pool.pooledReservedChunks -= 1
                taken.append((chunk, reservation))
                return chunk
            case .unreserved:
                guard let chunk = pool.takeChunk() else { return outOfPrepared() }
                taken.append((chunk, nil))
                return chunk
            case .none:
                return nil
            }
        }

        private func outOfPrepared() -> UInt64? {
            waitingForPreparation = true
            wanted = max(wanted, taken.count + 1)
            return nil
        }

        func giveBack(_ chunk: UInt64) {
            if let last = taken.popLast(), let reservation = last.reservation {
                reservation.undraw()
                pool.pooledReservedChunks += 1
            }
            pool.returnChunk(chunk)
        }

        /// The reservation each chunk drawn from one was drawn from (empty,
        /// and free, for the usual write that drew on none).
        var reservationsByChunk: [UInt64: Reservation] {
            var drawn: [UInt64: Reservation] = [:]
            for entry in taken { if let reservation = entry.reservation { drawn[entry.chunk] = reservation } }
            return drawn
        }

        /// The reservations this write drew on, with how many chunks each.
        var drawnCounts: [(Reservation, UInt64)] {
            var counts: [ObjectIdentifier: (Reservation, UInt64)] = [:]
            for entry in taken {
                guard let reservation = entry.reservation else { continue }
                counts[ObjectIdentifier(reservation), default: (reservation, 0)].1 += 1
            }
            return Array(counts.values)
        }
    }

    /// The chunk source for a write to `volume` through an export bound to
    /// `bound` (a reservation id), in the documented order.
    func chunkSource(for volume: Volume, bound: String?) -> WriteChunks {
        assertEngineThread()
        return WriteChunks(volume: volume, reservations: volume.drawOrder(bound: bound), metadataShort: metadataShort)
    }

    /// A write planned with `source` is under way: hold the reservations it
    /// drew on.
    func beginDrawing(_ source: WriteChunks) {
        for (reservation, count) in source.drawnCounts {
            reservation.inFlight += 1
            reservation.drawnInFlight += count
        }
    }

    /// The write completed: record what it drew and let released
    /// reservations end.
    func endDrawing(_ source: WriteChunks) {
        if !source.taken.isEmpty { checkThresholds(source.pool) }
        for (reservation, count) in source.drawnCounts {
            reservation.inFlight -= 1
            reservation.drawnInFlight -= count
            // Chunks drawn by writes still in flight are not durable yet: a
            // crash gives them back to the reservation.
            pending.append(.setReservationRemaining(id: reservation.id, remaining: reservation.durableRemaining))
            if reservation.released && reservation.inFlight == 0 { finishRelease(reservation) }
        }
    }

    /// Writes into reserved-unwritten chunks make them data.
    /// With `cleanOnly` only the chunks that held zeros (written in place);
    /// those that may hold other bytes are filled, and marked as they land.
    func markWritten(_ volume: Volume, offset: UInt64, length: Int, cleanOnly: Bool = false) {
        guard length > 0, volume.reservations.contains(where: { $0.range != nil }) else { return }
        let chunkSize = volume.pool.chunkSize
        for chunk in (offset / chunkSize)...((offset + UInt64(length) - 1) / chunkSize) {
            if cleanOnly, volume.unwrittenOwner(of: chunk)?.mayHoldData(chunk) == true { continue }
            markWritten(volume, chunk: chunk)
        }
    }

    func markWritten(_ volume: Volume, chunk: UInt64) {
        guard let owner = volume.unwrittenOwner(of: chunk) else { return }
        owner.markWritten(chunk)
        volume.pool.unwrittenReservedChunks -= 1
        pending.append(.markWritten(volume: volume.layer, virtualChunk: chunk))
    }

    /// A write found no chunk. Decides, per the pool's policy, whether it
    /// waits (`retry` runs later) or fails now (`fail` runs).
    /// `noSpace` is the error when the pool has no space; a pool whose
    /// chunk preparation fails gives its error instead.
    func noChunk(for volume: Volume, offset: UInt64, source: WriteChunks, deadline: Int64?, noSpace: RemapError,
                 retry: @escaping (_ deadline: Int64?) -> Void, fail: @escaping (RemapError) -> Void) {
        assertEngineThread()
        // A request may need more chunks than the stash holds (a 16 MiB
        // write of 4 KiB chunks, a large WRITE_ZEROES keeping holes
        // allocated): the stash grows for it, doubling until it fits.
        if source.waitingForPreparation {
            if chunksComing(volume.pool, want: 2 * source.wanted) { return waitForChunks { retry(deadline) } }
            if let error = preparationError(volume.pool) { return fail(error) }
        }
        let pool = volume.pool
        let failed = { [self] in
            let now = monotonicNanoseconds()
            if now - (lastNoSpaceEvent[pool.name] ?? 0) > 1_000_000_000 {
                lastNoSpaceEvent[pool.name] = now
                events.record(.poolNoSpace, pool: pool.name, volume: volume.name, offsetBytes: offset,
                              detail: "a write to volume '\(volume.name)' at offset \(offset) found no space in pool '\(pool.name)'")
            }
            fail(noSpace)
        }
        if case .queue(let seconds) = pool.onNoSpace {
            let until = deadline ?? monotonicNanoseconds() + Int64(seconds) * 1_000_000_000
            if monotonicNanoseconds() < until {
                spaceWaiters.append((until, pool, { retry(until) }, failed))
                return
            }
        }
        failed()
    }

    /// Space may have come back to `pool`: queued writes try again.
    func retrySpaceWaiters(_ pool: Pool) {
        let waiting = spaceWaiters.filter { $0.pool === pool }
        guard !waiting.isEmpty else { return }
        spaceWaiters.removeAll { $0.pool === pool }
        for waiter in waiting { waiter.retry() }
    }

    /// Queued writes past their deadline fail with ENOSPC.
    func expireSpaceWaiters(now: Int64) {
        let expired = spaceWaiters.filter { $0.deadline <= now }
        guard !expired.isEmpty else { return }
        spaceWaiters.removeAll { $0.deadline <= now }
        for waiter in expired { waiter.fail() }
    }

    // MARK: - Thresholds and leases (from tick)

    func checkThresholds() {
        for pool in pools.values { checkThresholds(pool) }
    }

    /// Fires `pool.low-space` for each threshold crossed upward since the
    /// last check; a threshold fires again only after space fell below it.
    func checkThresholds(_ pool: Pool) {
        do {
            let percent = pool.committedPercent
            var crossed = crossedThresholds[pool.name] ?? []
            for threshold in pool.lowSpaceThresholds.sorted() {
                if percent >= Double(threshold) {
                    if crossed.insert(threshold).inserted {
                        events.record(.poolLowSpace, pool: pool.name, percent: threshold,
                                      detail: "pool '\(pool.name)' is \(Int(percent))% committed (threshold \(threshold)%)")
                    }
                } else {
                    crossed.remove(threshold)
                }
            }
            crossedThresholds[pool.name] = crossed
        }
    }

    /// When a lease of `ttl` seconds taken now ends, in whole Unix seconds
    /// rounded up: a lease may end up to a second late, never early.
    func leaseEnd(_ ttl: UInt64) -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) + Int64(ttl) + (now.tv_nsec > 0 ? 1 : 0)
    }

    func expireLeases(now: Int64) {
        var expired: [Reservation] = []
        for volume in volumes.values {
            for reservation in volume.reservations where !reservation.released {
                if let end = reservation.expiresAt, end <= now { expired.append(reservation) }
            }
        }
        guard !expired.isEmpty else { return }
        for reservation in expired {
            events.record(.reservationExpired, pool: reservation.volume.pool.name, volume: reservation.volume.name,
                          reservation: reservation.id, detail: "lease \(reservation.id) on volume '\(reservation.volume.name)' expired")
            release(reservation)
        }
        commit { result in
            if case .failure(let error) = result { log.error("committing expired leases failed: \(error)") }
        }
    }

    // MARK: - Reservation life cycle (engine thread)

    /// Drops the holder's reference; the reservation ends once no write
    /// drawing on it is in flight.
    func release(_ reservation: Reservation) {
        assertEngineThread()
        guard !reservation.released else { return }
        reservation.released = true
        if reservation.inFlight == 0 { finishRelease(reservation) }
    }

    /// Returns what the reservation did not use to the pool. Unwritten
    /// chunks of a range go to another live range reservation covering them,
    /// else are unmapped (freed after the next commit).
    func finishRelease(_ reservation: Reservation) {
        let volume = reservation.volume
        guard let index = volume.reservations.firstIndex(where: { $0 === reservation }) else { return }
        volume.reservations.remove(at: index)
        let pool = volume.pool
        if reservation.kind == .pooled {
            pool.pooledReservedChunks -= reservation.remaining
        } else {
            // Its copy-on-write space goes with it.
            for sticky in volume.reservations where sticky.role == .copyOnWrite && sticky.name == reservation.id {
                release(sticky)
            }
            for chunk in reservation.unwrittenChunks {
                let clean = !reservation.mayHoldData(chunk)
                reservation.markWritten(chunk)
                if let heir = volume.rangeReservation(covering: chunk) {
                    heir.markUnwritten(chunk, clean: clean)
                } else if copying[ChunkKey(volume: volume.key, chunk: chunk)] != nil {
                    // A write is filling it: it is data, not a hole to give back.
                    pool.unwrittenReservedChunks -= 1
                    pending.append(.markWritten(volume: volume.layer, virtualChunk: chunk))
                } else {
                    pool.unwrittenReservedChunks -= 1
                    unmapChunk(volume, chunk)
                }
            }
        }
        pending.append(.deleteReservation(id: reservation.id))
        for (name, export) in extraExports where export.reservation == reservation.id {
            extraExports[name] = (export.volume, nil)
        }
        events.record(.reservationReleased, pool: pool.name, volume: volume.name, reservation: reservation.id,
                      detail: "reservation \(reservation.id) on volume '\(volume.name)' released; \(reservation.usedBytes) bytes used")
        checkThresholds(pool)
        retrySpaceWaiters(pool)
    }

    /// Creates a reservation on the engine thread; `reply` gets it once durable.
    func reserve(_ volume: Volume, _ spec: ReservationSpec, role: Reservation.Role,
                 reply: @escaping (Result<(ReservationInfo, created: Bool), RemapError>) -> Void) {
        assertEngineThread()
        let pool = volume.pool
        let chunkSize = pool.chunkSize
        if let name = spec.name, let existing = volume.reservations.first(where: { $0.name == name && !$0.released }) {
            return reply(matches(existing, spec)
                ? .success((existing.info, false))
                : .failure(.alreadyExists(kind: "reservation", name: name,
                                          detail: "reservation '\(name)' on volume '\(volume.name)' exists with another spec")))
        }
        if let refusal = changeRefusal(pool) { return reply(.failure(refusal)) }
        let expiresAt = spec.ttlSeconds.map(leaseEnd)
        let reservation: Reservation
        var changes: [MetadataChange] = []
        var sharedCount: UInt64 = 0
        switch spec.amount {
        case .pooled(let bytes):
            let chunks = (bytes + chunkSize - 1) / chunkSize
            guard pool.unreservedFreeChunks >= chunks else {
                return reply(.failure(.noSpace(requestedBytes: chunks * chunkSize, availableBytes: pool.freeBytes)))
            }
            reservation = Reservation(id: "r-" + randomUUID(), name: spec.name, volume: volume, kind: .pooled, role: role,
                                      chunkCount: chunks, ttlSeconds: spec.ttlSeconds, expiresAt: expiresAt)
            reservation.setRemaining(chunks)
            pool.pooledReservedChunks += chunks
        case .range(let offset, let length):
            guard length > 0, offset <= volume.sizeBytes, length <= volume.sizeBytes - offset else {
                return reply(.failure(.invalidArgument(
                    "range \(offset)+\(length) must be non-empty and inside the volume's \(volume.sizeBytes) bytes")))
            }
            let first = offset / chunkSize
            let count = (offset + length - 1) / chunkSize - first + 1
            // Decided at once, from the extents, before any per-chunk work.
            let holeCount = count - volume.map.mappedCount(in: first..<(first + count))
            // Chunks of the range that hold data shared with a snapshot or a
            // clone need copy-on-write space as well (sticky), or a write
            // the reservation covers could still find no space.
            sharedCount = sharedChunks(volume, in: first..<(first + count))
            guard pool.unreservedFreeChunks >= holeCount + sharedCount else {
                return reply(.failure(.noSpace(requestedBytes: (holeCount + sharedCount) * chunkSize, availableBytes: pool.freeBytes)))
            }
            guard pool.cleanChunksAvailable >= holeCount else {
                // Some are being prepared: try again once they are.
                if chunksComing(pool) { return waitForChunks { [self] in reserve(volume, spec, role: role, reply: reply) } }
                return reply(.failure(noCleanChunks(pool, needed: holeCount)))
            }
            let holes = volume.map.holes(in: first..<(first + count))
            reservation = Reservation(id: "r-" + randomUUID(), name: spec.name, volume: volume, kind: .range(firstChunk: first),
                                      role: role, chunkCount: count, ttlSeconds: spec.ttlSeconds, expiresAt: expiresAt)
            for hole in holes { changes += reserveCleanChunk(volume, hole, for: reservation) }
            prepareChunks(pool)
        }
        volume.reservations.append(reservation)
        let stored = StoredReservation(
            id: reservation.id, volume: volume.key, name: reservation.name, firstChunk: reservation.range?.lowerBound,
            chunkCount: reservation.chunkCount, remaining: reservation.kind == .pooled ? reservation.remaining : 0,
            role: role.rawValue, ttlSeconds: spec.ttlSeconds, expiresAt: expiresAt)
        pending += [.createReservation(stored)] + changes
        if sharedCount > 0 {
            // The other range reservations keep what they hold.
            var needs = volume.reservations.filter { $0.range != nil && !$0.released && $0 !== reservation }.map { range in
                (range: range, chunks: volume.stickySpace(for: range)?.held ?? 0)
            }
            needs.append((reservation, sharedCount))
            applyCopyOnWriteNeeds(volume, needs, growOnly: true)
        }
        checkThresholds()
        commit { result in reply(result.map { (reservation.info, true) }) }
    }

    /// Mapped chunks of `range` a write would have to copy: counted one by
    /// one for ranges up to 65,536 chunks; beyond, every mapped chunk counts
    /// (an upper bound from the extents, so the engine thread never walks a
    /// huge range).
    /// Only chunks another image maps count: one another image let go of,
    /// not durably yet (`Family.pendingReleases`), is this volume's alone
    /// once the release is durable, and nothing gives back copy-on-write
    /// space set aside for it then (copy-on-write space shrinks only when an
    /// image of the family goes).
    func sharedChunks(_ volume: Volume, in range: Range<UInt64>) -> UInt64 {
        guard volume.family.members.count > 1 else { return 0 }
        if range.count > 1 << 16 { return volume.map.mappedCount(in: range) }
        return UInt64(range.filter { chunk in volume.map.lookup(chunk).map { volume.mappedByAnother(chunk, $0) } ?? false }.count)
    }

    private func matches(_ reservation: Reservation, _ spec: ReservationSpec) -> Bool {
        let chunkSize = reservation.chunkSize
        guard reservation.ttlSeconds == spec.ttlSeconds else { return false }
        switch spec.amount {
        case .pooled(let bytes):
            return reservation.kind == .pooled && reservation.chunkCount == (bytes + chunkSize - 1) / chunkSize
        case .range(let offset, let length):
            guard let range = reservation.range, length > 0 else { return false }
            return range.lowerBound == offset / chunkSize && range.upperBound == (offset + length - 1) / chunkSize + 1
        }
    }

    // MARK: - Control plane (blocking, from other threads)

    public func createReservation(volume name: String, _ spec: ReservationSpec) throws(RemapError) -> (ReservationInfo, created: Bool) {
        switch spec.amount {
        case .pooled(let bytes): guard bytes > 0 else { throw .invalidArgument("bytes must be greater than 0") }
        case .range(_, let length): guard length > 0 else { throw .invalidArgument("lengthBytes must be greater than 0") }
        }
        if let ttl = spec.ttlSeconds, !(1...ReservationSpec.maximumTTL).contains(ttl) {
            throw .invalidArgument("ttlSeconds must be from 1 to \(ReservationSpec.maximumTTL)")
        }
        if let name = spec.name { try Name.validate(name, kind: "reservation") }
        return try call { [self] reply in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            reserve(volume, spec, role: .plain) { reply($0) }
        }
    }

    public func reservationInfos(volume name: String) throws(RemapError) -> [ReservationInfo] {
        try call { [self] reply in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            // Copy-on-write space of sticky reservations shows in reservedBytes, not as reservations of its own.
            reply(.success(volume.reservations.filter { !$0.released && $0.role != .copyOnWrite }.map(\.info)))
        }
    }

    public func reservationInfo(volume name: String, id: String) throws(RemapError) -> ReservationInfo {
        try call { [self] reply in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            guard let reservation = volume.reservations.first(where: { $0.id == id && !$0.released && $0.role != .copyOnWrite }) else {
                return reply(.failure(.notFound(kind: "reservation", name: id)))
            }
            reply(.success(reservation.info))
        }
    }

    public func deleteReservation(volume name: String, id: String) throws(RemapError) {
        try call { [self] (reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            guard let reservation = volume.reservations.first(where: { $0.id == id && !$0.released && $0.role != .copyOnWrite }) else {
                return reply(.failure(.notFound(kind: "reservation", name: id)))
            }
            release(reservation)
            commit { result in reply(result) }
        }
    }

    public func renewReservation(volume name: String, id: String, ttlSeconds: UInt64?) throws(RemapError) -> ReservationInfo {
        if let ttl = ttlSeconds, !(1...ReservationSpec.maximumTTL).contains(ttl) {
            throw .invalidArgument("ttlSeconds must be from 1 to \(ReservationSpec.maximumTTL)")
        }
        return try call { [self] reply in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            guard let reservation = volume.reservations.first(where: { $0.id == id && !$0.released && $0.role != .copyOnWrite }) else {
                return reply(.failure(.notFound(kind: "reservation", name: id)))
            }
            guard let ttl = ttlSeconds ?? reservation.ttlSeconds else {
                return reply(.failure(.invalidArgument("reservation \(id) is not a lease: it has no TTL to renew")))
            }
            reservation.ttlSeconds = ttl
            reservation.expiresAt = leaseEnd(ttl)
            pending.append(.setReservationExpiry(id: id, expiresAt: reservation.expiresAt, ttlSeconds: ttl))
            commit { result in reply(result.map { reservation.info }) }
        }
    }
}
