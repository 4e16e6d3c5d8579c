import Glibc
import RemapCore
import RemapLog
import RemapStore

/// A chunk a write mapped (a hole filled, or a shared chunk copied) whose
/// mapping is not pending yet: it joins `pending` once a write into it
/// succeeded, and is given back if every write into it failed.
struct UnsettledChunk {
    var physical: UInt64
    /// The layer the write was planned in: a snapshot taken meanwhile holds it.
    var layer: Int64
    /// For a copy on write: the shared chunk it replaces.
    var replaced: UInt64?
    /// The reservation the chunk was drawn from: it gets the chunk back if
    /// the chunk is given back.
    var reservation: Reservation?
    /// Writes into the chunk in flight.
    var writers = 0
    var succeeded = false
}

/// The two-phase write on the engine thread, behind the I/O surface's
/// `write` (and `zero`, for chunks it must copy); with copy on write for
/// chunks a snapshot or clone shares.
extension Engine {
    // MARK: - Writers in flight (a snapshot waits for them)

    /// A write, TRIM or WRITE_ZEROES to `volume` is about to be planned: run
    /// `body` now, or later if a snapshot of the volume is waiting for the
    /// writes already in flight to finish.
    func whenWritable(_ volume: Volume, _ body: @escaping () -> Void) {
        assertEngineThread()
        if frozenVolumes[volume.key] != nil {
            frozenVolumes[volume.key]!.append(body)  // invariant: checked just above
            return
        }
        body()
    }

    func beginVolumeWrite(_ volume: Volume) {
        volumeWrites[volume.key, default: 0] += 1
    }

    func endVolumeWrite(_ volume: Volume) {
        let left = (volumeWrites[volume.key] ?? 1) - 1
        volumeWrites[volume.key] = left == 0 ? nil : left
        if left == 0, let waiting = quiesceWaiters.removeValue(forKey: volume.key) {
            for body in waiting { body() }
        }
    }

    /// Holds new writes to `volume`, runs `body` once the writes in flight
    /// have completed, then lets the held writes go. So a snapshot has every
    /// write acknowledged before it and none that started after.
    func quiesced(_ volume: Volume, _ body: @escaping (_ resume: @escaping () -> Void) -> Void) {
        assertEngineThread()
        guard frozenVolumes[volume.key] == nil else {
            // Another snapshot of it is waiting: go after it.
            frozenVolumes[volume.key]!.append { [self] in quiesced(volume, body) }  // invariant: checked just above
            return
        }
        frozenVolumes[volume.key] = []
        let resume = { [self] in
            let held = frozenVolumes.removeValue(forKey: volume.key) ?? []
            for write in held { write() }
        }
        if volumeWrites[volume.key] == nil { return body(resume) }
        quiesceWaiters[volume.key, default: []].append { body(resume) }
    }

    // MARK: - Chunks being copied

    /// The first chunk of the range being copied on write, if any: I/O on
    /// it waits until the copy has landed.
    func chunkBeingCopied(_ volume: Volume, offset: UInt64, length: Int) -> ChunkKey? {
        guard !copying.isEmpty, length > 0 else { return nil }
        let chunkSize = volume.pool.chunkSize
        for chunk in (offset / chunkSize)...((offset + UInt64(length) - 1) / chunkSize) {
            let key = ChunkKey(volume: volume.key, chunk: chunk)
            if copying[key] != nil { return key }
        }
        return nil
    }

    private func copyLanded(_ key: ChunkKey) {
        for waiter in copying.removeValue(forKey: key) ?? [] { waiter() }
    }

    // MARK: - Write

    /// Writes `length` bytes at `data` (which `owner` keeps alive until
    /// `completion`) to `volume` at `offset`: maps holes, copies shared
    /// chunks on write, draws on reservations (`bound`: the export's), waits
    /// or fails per the pool's no-space policy. `completion` runs on the
    /// engine thread once the data is on the supplier and its mappings are
    /// pending (durable at the next commit) — with `fua`, once a flush has
    /// made them durable.
    func writeData(_ volume: Volume, offset: UInt64, length: Int, data: UnsafeMutableRawPointer, owner: AnyObject,
                   bound: String?, fua: Bool = false, completion: @escaping (Result<Void, RemapError>) -> Void) {
        whenWritable(volume) { [self] in
            beginVolumeWrite(volume)
            planWrite(volume, offset: offset, length: length, data: data, owner: owner, bound: bound, deadline: nil) { [self] result in
                endVolumeWrite(volume)
                if fua, case .success = result { return flush(volume, completion) }
                completion(result)
            }
        }
    }

    func planWrite(_ volume: Volume, offset: UInt64, length: Int, data: UnsafeMutableRawPointer, owner: AnyObject,
                   bound: String?, deadline: Int64?, completion: @escaping (Result<Void, RemapError>) -> Void) {
        assertEngineThread()
        if let refusal = ioRefusal(volume.pool) { return completion(.failure(refusal)) }
        if let busy = chunkBeingCopied(volume, offset: offset, length: length) {
            copying[busy]!.append { [self] in  // invariant: found just above
                planWrite(volume, offset: offset, length: length, data: data, owner: owner, bound: bound,
                          deadline: deadline, completion: completion)
            }
            return
        }
        let source = chunkSource(for: volume, bound: bound)
        let plan: WritePlan
        do {
            plan = try volume.plannedWrite(offset: offset, length: length, source: source)
        } catch {
            guard case .noSpace = error else { return completion(.failure(error)) }
            return noChunk(
                for: volume, offset: offset, source: source, deadline: deadline, noSpace: error,
                retry: { [self] in
                    planWrite(volume, offset: offset, length: length, data: data, owner: owner, bound: bound,
                              deadline: $0, completion: completion)
                },
                fail: { completion(.failure($0)) })
        }
        willWrite(volume, plan, drawnFrom: source, offset: offset, length: length)
        // Reserved chunks the write reaches in place are data from now on, so
        // a release meanwhile cannot unmap what it is writing (if it fails
        // they hold zeros, or its bytes in its own range). Those it fills
        // (they may hold other bytes) become data when the fill lands.
        markWritten(volume, offset: offset, length: length, cleanOnly: true)
        beginDrawing(source)
        for copy in plan.copies {
            copying[ChunkKey(volume: volume.key, chunk: copy.virtualChunk)] = []
            // Still this volume's after a crash until the copy's mapping is durable.
            volume.family.holdRelease(copy.oldPhysical)
        }
        for fill in plan.fills { copying[ChunkKey(volume: volume.key, chunk: fill.virtualChunk)] = [] }
        let progress = Progress(pieces: plan.segments.count + plan.copies.count + plan.fills.count)
        let epoch = beginIO()
        let finish = { [self] in
            endIO(epoch)
            let succeeded = progress.failure == 0
            didWrite(volume, offset: offset, length: length, succeeded: succeeded)
            endDrawing(source)
            completion(succeeded ? .success(()) : .failure(writeFailed(volume, error: -progress.failure, fd: progress.failedFD)))
        }
        for segment in plan.segments {
            guard case .supplier(let index, let supplierOffset) = segment.target else { continue }
            let fd = supplierFD(pool: volume.pool, index: index)
            suppliers.writeFully(fd: fd, from: data + segment.bufferOffset, count: segment.length, offset: supplierOffset) { result in
                _ = owner  // the data lives until the write completes
                if progress.complete(result, fd: fd) { finish() }
            }
        }
        for copy in plan.copies {
            copyOnWrite(volume, copy, data: data, owner: owner) { [self] result, fd in
                // Undone before anyone waiting for the chunk plans on it.
                if result < 0 { undoCopy(volume, copy.virtualChunk) }
                copyLanded(ChunkKey(volume: volume.key, chunk: copy.virtualChunk))
                if progress.complete(result, fd: fd) { finish() }
            }
        }
        for fill in plan.fills {
            self.fill(volume, fill, data: data, owner: owner) { [self] result, fd in
                // Written before the writes waiting for the chunk plan on it:
                // they go in place, never fill it again over this one.
                if result >= 0 { markWritten(volume, chunk: fill.virtualChunk) }
                copyLanded(ChunkKey(volume: volume.key, chunk: fill.virtualChunk))
                if progress.complete(result, fd: fd) { finish() }
            }
        }
        if progress.issued() { finish() }
    }

    /// Writes a reserved-unwritten chunk whole: the write's part, laid over
    /// zeros unless it covers the chunk (see `ChunkFill`). If it fails the
    /// chunk stays unwritten and reads zeros.
    private func fill(_ volume: Volume, _ fill: ChunkFill, data: UnsafeMutableRawPointer, owner: AnyObject,
                      _ handler: @escaping (_ result: Int32, _ writtenFD: Int32) -> Void) {
        let pool = volume.pool
        let target = pool.location(of: fill.physicalChunk)
        let fd = supplierFD(pool: pool, index: target.supplier)
        if fill.whole {
            return suppliers.writeFully(fd: fd, from: data + fill.bufferOffset, count: fill.length, offset: target.offset) { result in
                _ = owner  // the data lives until the write completes
                handler(result, fd)
            }
        }
        let buffer = IOBuffer(count: Int(min(pool.chunkSize, volume.sizeBytes - fill.virtualChunk * pool.chunkSize)))
        memset(buffer.pointer, 0, buffer.count)
        memcpy(buffer.pointer + Int(fill.offsetInChunk), data + fill.bufferOffset, fill.length)
        _ = owner
        suppliers.writeFully(fd: fd, from: buffer.pointer, count: buffer.count, offset: target.offset) { result in
            _ = buffer  // lives until the write completes
            handler(result, fd)
        }
    }

    /// The error a failed write answers. A host filesystem full under a
    /// sparse supplier is ENOSPC and leaves the pool as it is; any other
    /// failed write means the device lost data: the pool degrades.
    private func writeFailed(_ volume: Volume, error: Int32, fd: Int32?) -> RemapError {
        let pool = volume.pool
        if error == ENOSPC {
            let now = monotonicNanoseconds()
            if now - (lastNoSpaceEvent[pool.name] ?? 0) > 1_000_000_000 {
                lastNoSpaceEvent[pool.name] = now
                events.record(.poolNoSpace, pool: pool.name, volume: volume.name,
                              detail: "a write to volume '\(volume.name)' found the host filesystem under pool '\(pool.name)' full")
            }
            return .io(errno: ENOSPC, context: "the host filesystem under pool '\(pool.name)' is full")
        }
        if let fd { supplierFailed(fd: fd, errno: error, during: "a write") }
        return .io(errno: error, context: "writing the supplier: \(String(cString: strerror(error)))")
    }

    /// Fills a new chunk: the old chunk's bytes (unless the write covers it
    /// whole) with the write's part laid over them, written as one piece.
    /// The handler gets the result and, for a failed write (not a failed
    /// read of the old chunk), the supplier written.
    private func copyOnWrite(_ volume: Volume, _ copy: CopyOnWrite, data: UnsafeMutableRawPointer, owner: AnyObject,
                             _ handler: @escaping (_ result: Int32, _ writtenFD: Int32?) -> Void) {
        let pool = volume.pool
        let chunkBytes = Int(min(pool.chunkSize, volume.sizeBytes - copy.virtualChunk * pool.chunkSize))
        let buffer = IOBuffer(count: chunkBytes)
        let target = pool.location(of: copy.newPhysical)
        let targetFD = supplierFD(pool: pool, index: target.supplier)
        let writeWhole = { [self] in
            memcpy(buffer.pointer + Int(copy.offsetInChunk), data + copy.bufferOffset, copy.length)
            _ = owner
            suppliers.writeFully(fd: targetFD, from: buffer.pointer, count: chunkBytes, offset: target.offset) { result in
                _ = buffer  // lives until the write completes
                handler(result, targetFD)
            }
        }
        if copy.whole { return writeWhole() }
        let source = pool.location(of: copy.oldPhysical)
        suppliers.readFully(fd: supplierFD(pool: pool, index: source.supplier), into: buffer.pointer, count: chunkBytes,
                            offset: source.offset) { result in
            if result < 0 { return handler(result, nil) }
            writeWhole()
        }
    }

    // MARK: - Settling the chunks a write mapped

    /// Phase 1 bookkeeping: the chunks `plan` maps are unsettled until a
    /// write into them completes; every write into an unsettled chunk
    /// (this one, and later ones planned in place into it) counts as its writer.
    func willWrite(_ volume: Volume, _ plan: WritePlan, drawnFrom source: WriteChunks, offset: UInt64, length: Int) {
        assertEngineThread()
        var replaced: [UInt64: UInt64] = [:]
        for copy in plan.copies { replaced[copy.virtualChunk] = copy.oldPhysical }
        let drawn = source.reservationsByChunk
        for mapping in plan.newMappings {
            unsettled[ChunkKey(volume: volume.key, chunk: mapping.virtualChunk)] = UnsettledChunk(
                physical: mapping.physicalChunk, layer: volume.layer, replaced: replaced[mapping.virtualChunk],
                reservation: drawn[mapping.physicalChunk])
        }
        forEachUnsettled(volume, offset: offset, length: length) { $0.writers += 1 }
    }

    /// Phase 3: a write completed. A chunk it wrote that was unsettled joins
    /// the pending metadata once a write into it succeeded; one whose every
    /// write failed is given back (a failed write maps no chunk).
    func didWrite(_ volume: Volume, offset: UInt64, length: Int, succeeded: Bool) {
        assertEngineThread()
        forEachUnsettled(volume, offset: offset, length: length) { entry in
            entry.writers -= 1
            if succeeded { entry.succeeded = true }
        }
        guard !unsettled.isEmpty, length > 0 else { return }
        let chunkSize = volume.pool.chunkSize
        for chunk in (offset / chunkSize)...((offset + UInt64(length) - 1) / chunkSize) {
            let key = ChunkKey(volume: volume.key, chunk: chunk)
            guard let entry = unsettled[key], entry.succeeded || entry.writers <= 0 else { continue }
            unsettled[key] = nil
            if entry.succeeded {
                settle(volume, chunk, entry)
            } else {
                rollBack(volume, chunk, entry)
            }
        }
    }

    private func forEachUnsettled(_ volume: Volume, offset: UInt64, length: Int, _ body: (inout UnsettledChunk) -> Void) {
        guard !unsettled.isEmpty, length > 0 else { return }
        let chunkSize = volume.pool.chunkSize
        for chunk in (offset / chunkSize)...((offset + UInt64(length) - 1) / chunkSize) {
            let key = ChunkKey(volume: volume.key, chunk: chunk)
            if unsettled[key] != nil { body(&unsettled[key]!) }  // invariant: checked just before
        }
    }

    private func settle(_ volume: Volume, _ chunk: UInt64, _ entry: UnsettledChunk) {
        if let old = entry.replaced {
            // Copy-on-write mappings replace durable data: their commit syncs the pool first.
            copyPools.insert(volume.pool.name)
            releaseShared(volume, virtual: chunk, physical: old, held: true)
        }
        pending.append(.map(volume: entry.layer, virtualChunk: chunk, physicalChunk: entry.physical))
        pending.append(.clearDirty(pool: volume.pool.name, physicalChunk: entry.physical))
    }

    /// Every write into `chunk` failed: the volume maps what it mapped
    /// before (a hole, or the chunk it shares), and the new chunk goes back
    /// to the pool — zeroed first, since the failed write may have reached it.
    private func rollBack(_ volume: Volume, _ chunk: UInt64, _ entry: UnsettledChunk) {
        guard volume.map.lookup(chunk) == entry.physical else { return }  // trimmed meanwhile: already given back
        if let old = entry.replaced {
            let stillShared = volume.family.members.contains {
                $0 !== volume && chunk < $0.map.virtualChunks && $0.map.lookup(chunk) == old
            }
            guard stillShared else {
                // Every image that shared the old chunk let go of it while
                // the copy was in flight (it is being freed): keep the copy.
                log.warning("volume '\(volume.name)': a failed copy on write of chunk \(chunk) is kept; its old chunk was freed meanwhile")
                return settle(volume, chunk, entry)
            }
            volume.map.map(chunk, to: old)
            volume.forgetOwned(chunk)
            volume.family.endRelease(old)
        } else {
            volume.map.unmap(chunk)
        }
        pending.append(.markDirty(pool: volume.pool.name, physicalChunk: entry.physical))
        unmapped.append((volume.pool, entry.physical))
        if let reservation = entry.reservation {
            // Owed back once the chunk is zeroed; kept in what metadata says
            // remains, so a crash meanwhile gives it back too.
            reservation.owed += 1
            reclaimHeirs[ReclaimKey(pool: volume.pool.name, chunk: entry.physical)] = reservation
        }
    }

    /// A copy on write failed: undo it now, before the writes waiting for
    /// the chunk plan on it (they must copy the shared chunk again).
    private func undoCopy(_ volume: Volume, _ chunk: UInt64) {
        let key = ChunkKey(volume: volume.key, chunk: chunk)
        guard let entry = unsettled.removeValue(forKey: key) else { return }
        rollBack(volume, chunk, entry)
    }
}
