import Glibc
import RemapCore
import RemapLog
import RemapStore

/// Chunk life cycle on the engine thread: preparing free chunks for writes,
/// unmapping chunks (TRIM, WRITE_ZEROES), and making unmapped chunks free
/// again once no I/O can still touch them.
extension Engine {
    /// Starts a data I/O; returns its epoch for `endIO`.
    func beginIO() -> UInt64 {
        assertEngineThread()
        ioInFlight[epoch, default: 0] += 1
        return epoch
    }

    func endIO(_ started: UInt64) {
        if let count = ioInFlight[started], count > 1 {
            ioInFlight[started] = count - 1
        } else {
            ioInFlight[started] = nil
            if !draining.isEmpty { reclaimDrained() }
        }
    }

    /// Keeps a stash of prepared chunks: free chunks durably marked dirty,
    /// so writes can take them without a commit of their own and a crash
    /// before their mapping commits still gets them zeroed. `want`: a
    /// waiting request needs the stash to hold that many.
    func prepareChunks(_ pool: Pool, want: Int = 0) {
        assertEngineThread()
        guard !preparingPools.contains(pool.name), pool.preparedCount < max(Self.stashLowWater, want),
              pool.state != .offline
        else { return }
        if let failure = preparationFailures[pool.name], monotonicNanoseconds() < failure.retryAt { return }
        let chunks = pool.startPreparing(max(Self.stashTarget, want) - pool.preparedCount)
        guard !chunks.isEmpty else { return }
        preparingPools.insert(pool.name)
        let job = CommitJob(syncFDs: [], changes: chunks.map { .markDirty(pool: pool.name, physicalChunk: $0) }) { _ in }
        submit(job) { [self] result in
            preparingPools.remove(pool.name)
            switch result {
            case .success:
                pool.didPrepare(chunks)
                if preparationFailures.removeValue(forKey: pool.name) != nil {
                    log.notice("preparing chunks of pool '\(pool.name)' works again")
                }
            case .failure(let error):
                pool.preparationFailed(chunks)
                // Not again at once: the writers woken below would start
                // the next try straight away, and so on, a core spinning.
                if preparationFailures[pool.name] == nil {
                    log.error("preparing chunks of pool '\(pool.name)' failed: \(error); writes that need a new chunk fail until it works, tried again every second")
                }
                let answer = RemapError.io(errno: error.errno ?? EIO,
                                           context: "preparing chunks of pool '\(pool.name)' failed (\(error))")
                preparationFailures[pool.name] = (answer, monotonicNanoseconds() + Self.commitRetryInterval)
            }
            wakeWritersWaitingForChunks()
        }
    }

    /// Whether a write that found no prepared chunk should wait (chunks are
    /// coming) rather than fail with ENOSPC.
    func chunksComing(_ pool: Pool, want: Int = 0) -> Bool {
        prepareChunks(pool, want: want)
        return preparingPools.contains(pool.name)
    }

    /// Why no chunks are coming when the pool has free space: its last
    /// preparation failed and the next try is not due yet. What a request
    /// that needs clean chunks fails with then, rather than ENOSPC.
    /// Past the wait (a commit succeeded, or a second went by) the error
    /// no longer stands: a pool with no free chunk to prepare answers ENOSPC.
    func preparationError(_ pool: Pool) -> RemapError? {
        guard let failure = preparationFailures[pool.name], monotonicNanoseconds() < failure.retryAt else { return nil }
        return failure.error
    }

    /// What a control-plane change that needs `needed` clean chunks, and
    /// found none coming, answers: the failed preparation's error, else ENOSPC.
    func noCleanChunks(_ pool: Pool, needed: UInt64) -> RemapError {
        preparationError(pool) ?? .noSpace(requestedBytes: needed * pool.chunkSize, availableBytes: pool.freeBytes)
    }

    /// Runs `retry` once chunk preparation has moved on.
    func waitForChunks(_ retry: @escaping () -> Void) {
        waitingForChunks.append(retry)
    }

    private func wakeWritersWaitingForChunks() {
        let waiting = waitingForChunks
        waitingForChunks = []
        for retry in waiting { retry() }
    }

    /// Chunks went back to the allocator: refill stashes, wake waiters.
    func chunksReleased(_ pool: Pool) {
        checkThresholds(pool)
        prepareChunks(pool)
        if !preparingPools.contains(pool.name) { wakeWritersWaitingForChunks() }
        retrySpaceWaiters(pool)
    }

    /// Unmaps `virtual` of `volume` now (reads see zeros); the chunk is
    /// freed after the next commit and once older I/O has drained — unless
    /// a snapshot or clone still maps it.
    func unmapChunk(_ volume: Volume, _ virtual: UInt64) {
        assertEngineThread()
        if let owner = volume.unwrittenOwner(of: virtual) {
            owner.markWritten(virtual)
            volume.pool.unwrittenReservedChunks -= 1
        }
        guard let physical = volume.map.lookup(virtual) else { return }
        let shared = volume.isShared(virtual, physical)
        volume.map.unmap(virtual)
        let key = ChunkKey(volume: volume.key, chunk: virtual)
        let settled = unsettled.removeValue(forKey: key) == nil
        if hasLayersBelow(volume) {
            pending.append(.tombstone(layer: volume.layer, virtualChunk: virtual))
        } else if settled {
            pending.append(.unmap(volume: volume.layer, virtualChunk: virtual))
        }
        guard !shared else { return releaseShared(volume, virtual: virtual, physical: physical) }
        pending.append(.markDirty(pool: volume.pool.name, physicalChunk: physical))
        unmapped.append((volume.pool, physical))
    }

    /// Whether the volume's top layer has layers below it (then an unmapped
    /// chunk needs a tombstone to hide what they map).
    func hasLayersBelow(_ volume: Volume) -> Bool {
        layers[volume.layer]?.parent != nil
    }

    /// Maps a hole to a clean (prepared) chunk without writing to it, for
    /// WRITE_ZEROES with NO_HOLE.
    func mapCleanChunk(_ volume: Volume, _ virtual: UInt64, to physical: UInt64) {
        volume.map.map(virtual, to: physical)
        volume.markOwned(virtual)
        pending.append(.map(volume: volume.layer, virtualChunk: virtual, physicalChunk: physical))
        pending.append(.clearDirty(pool: volume.pool.name, physicalChunk: physical))
        if volume.pool.preparedCount < Self.stashLowWater { prepareChunks(volume.pool) }
    }

    /// Backs hole `virtual` of `volume` with a clean chunk that reads zeros
    /// and belongs to `owner` (reserved-unwritten); returns the metadata
    /// changes. The caller checked `pool.cleanChunksAvailable` and refills
    /// the stash afterwards (`prepareChunks`).
    func reserveCleanChunk(_ volume: Volume, _ virtual: UInt64, for owner: Reservation) -> [MetadataChange] {
        let pool = volume.pool
        let physical = pool.takeCleanChunk()!  // invariant: the caller checked cleanChunksAvailable
        volume.map.map(virtual, to: physical)
        volume.markOwned(virtual)
        owner.markUnwritten(virtual)
        pool.unwrittenReservedChunks += 1
        return [.reserveChunk(volume: volume.layer, virtualChunk: virtual, physicalChunk: physical),
                .clearDirty(pool: pool.name, physicalChunk: physical)]
    }

    /// A chunk inside a live range reservation was trimmed and zeroed: it is
    /// reserved-unwritten again.
    func reserveAgain(_ volume: Volume, _ virtual: UInt64, _ physical: UInt64) {
        guard volume.map.lookup(virtual) == physical, volume.unwrittenOwner(of: virtual) == nil,
              let owner = volume.rangeReservation(covering: virtual)
        else { return }
        owner.markUnwritten(virtual)
        volume.pool.unwrittenReservedChunks += 1
        pending.append(.reserveChunk(volume: volume.layer, virtualChunk: virtual, physicalChunk: physical))
    }

    /// Zeroes and frees every committed unmapped chunk that no I/O in
    /// flight can still touch.
    func reclaimDrained() {
        let oldest = ioInFlight.keys.min() ?? UInt64.max
        var ready: [(pool: Pool, chunks: [UInt64])] = []
        draining.removeAll { entry in
            guard entry.epoch < oldest else { return false }
            ready.append((entry.pool, entry.chunks))
            return true
        }
        for (pool, chunks) in ready { zero(chunks, of: pool) }
    }

    /// A job zeroing `chunks` (freed, marked dirty) and clearing their marks;
    /// the committer works out the supplier ranges.
    func zeroJob(pool: Pool, chunks: [UInt64]) -> CommitJob {
        let pieces = pool.segments.map { segment in
            let supplier = pool.suppliers[segment.supplier]
            return ChunkZeroing.Piece(firstChunk: segment.firstChunk, chunks: segment.chunks,
                                      fd: supplierFD(pool: pool, index: segment.supplier), supplierOffset: segment.supplierOffset,
                                      punch: supplier.kind == .file && !supplier.preallocated)
        }
        return CommitJob(syncFDs: [], changes: [],
                         zeroing: ChunkZeroing(pool: pool.name, chunkSize: pool.chunkSize, pieces: pieces, chunks: chunks)) { _ in }
    }

    /// How long a chunk whose zeroing failed waits before the next try.
    static let reclaimRetryInterval: Int64 = 2_000_000_000

    /// Zeroes freed chunks and gives them back to the allocator. Chunks
    /// whose zeroing fails (or whose pool is offline) stay allocated and
    /// marked dirty, and are tried again later: never reused unzeroed,
    /// never leaked until a restart.
    func zero(_ chunks: [UInt64], of pool: Pool, afterCommit: Bool = false) {
        assertEngineThread()
        guard pools[pool.name] === pool, !chunks.isEmpty else { return }
        guard pool.state != .offline else {
            reclaimRetries.append((pool, chunks, monotonicNanoseconds() + Self.reclaimRetryInterval))
            return
        }
        // A chunk left free by a copy on write (its other images deleted) may
        // still be what a durable mapping points at, until the mapping that
        // replaced it is committed; that mapping was settled when its write
        // completed, before the chunk drained. Zeroing the chunk first could
        // lose flushed data in a crash: commit what is pending, then zero.
        if !afterCommit && (!pending.isEmpty || commitInFlight) {
            reclaimJobs += 1
            return commit { [self] result in
                reclaimJobs -= 1
                guard case .success = result else {
                    return reclaimRetries.append((pool, chunks, monotonicNanoseconds() + Self.reclaimRetryInterval))
                }
                zero(chunks, of: pool, afterCommit: true)
            }
        }
        reclaimJobs += 1
        submitJob(zeroJob(pool: pool, chunks: chunks)) { [self] outcome in
            reclaimJobs -= 1
            noteFailedSyncs(outcome.failedSyncs, during: "write-back (fdatasync) of zeroed chunks")
            switch outcome.result {
            case .success:
                pool.allocator.release(outcome.zeroedRuns)
                if !reclaimHeirs.isEmpty { returnToHeirs(chunks, of: pool) }
                chunksReleased(pool)
            case .failure(let error):
                log.warning("zeroing \(chunks.count) freed chunk(s) of pool '\(pool.name)' failed: \(error); tried again in \(Self.reclaimRetryInterval / 1_000_000_000) s")
                reclaimRetries.append((pool, chunks, monotonicNanoseconds() + Self.reclaimRetryInterval))
            }
        }
    }

    /// Chunks a failed write had drawn from a reservation are free again:
    /// the reservation gets them back, if it still stands.
    private func returnToHeirs(_ chunks: [UInt64], of pool: Pool) {
        for chunk in chunks {
            guard let heir = reclaimHeirs.removeValue(forKey: ReclaimKey(pool: pool.name, chunk: chunk)),
                  !heir.released, heir.kind == .pooled, heir.owed > 0 else { continue }
            // (Owed nothing: a copy-on-write reservation that needs less now.)
            heir.owed -= 1
            heir.undraw()
            pool.pooledReservedChunks += 1
            pending.append(.setReservationRemaining(id: heir.id, remaining: heir.durableRemaining))
        }
    }

    /// Tries again the zeroing of chunks whose turn has come.
    func retryReclaims(now: Int64) {
        guard reclaimRetries.contains(where: { $0.due <= now }) else { return }
        let due = reclaimRetries.filter { $0.due <= now }
        reclaimRetries.removeAll { $0.due <= now }
        for entry in due { zero(entry.chunks, of: entry.pool) }
    }
}

extension Engine {
    /// Makes a supplier range read zeros: fallocate on the ring (punch a
    /// hole, or zero-range to keep the blocks), else writes of zeros unless
    /// `fast` (then the handler gets -EOPNOTSUPP).
    func zeroSupplier(fd: Int32, offset: UInt64, length: UInt64, punch: Bool, fast: Bool, _ handler: @escaping (Int32) -> Void) {
        assertEngineThread()
        let mode = punch ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
        suppliers.allocateSpace(fd: fd, mode: mode, offset: offset, length: length) { [self] result in
            guard result == -EOPNOTSUPP || result == -EINVAL else { return handler(result) }
            if fast { return handler(-EOPNOTSUPP) }
            writeZeros(fd: fd, offset: offset, length: length, handler)
        }
    }

    private func writeZeros(fd: Int32, offset: UInt64, length: UInt64, _ handler: @escaping (Int32) -> Void) {
        guard length > 0 else { return handler(0) }
        let count = Int(min(length, UInt64(Self.zeros.count)))
        suppliers.writeFully(fd: fd, from: Self.zeros.pointer, count: count, offset: offset) { [self] result in
            if result < 0 { return handler(result) }
            writeZeros(fd: fd, offset: offset + UInt64(count), length: length - UInt64(count), handler)
        }
    }

    /// A megabyte of zeros, never written to, shared by every zeroing write.
    nonisolated(unsafe) static let zeros: IOBuffer = zeroed(1 << 20)

    /// At least `count` bytes of zeros, never to be written to: the shared
    /// megabyte, or for larger chunks (up to 4 MiB) a buffer of their own.
    static func zeros(count: Int) -> IOBuffer {
        count <= zeros.count ? zeros : zeroed(count)
    }

    private static func zeroed(_ count: Int) -> IOBuffer {
        let buffer = IOBuffer(count: count)
        memset(buffer.pointer, 0, buffer.count)
        return buffer
    }
}
