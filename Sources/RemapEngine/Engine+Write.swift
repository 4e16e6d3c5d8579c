import Glibc
import RemapCore
import RemapStore

/// The two-phase write and read on the engine thread, shared by NBD, the
/// content stream and imports; with copy on write for chunks a snapshot or
/// clone shares.
extension Engine {
    // MARK: - Writers in flight (a snapshot waits for them)

    /// A write, TRIM or WRITE_ZEROES to `volume` is about to be planned: run
    /// `body` now, or later if a snapshot of the volume is waiting for the
    /// writes already in flight to finish.
    func whenWritable(_ volume: Volume, _ body: @escaping () -> Void) {
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
    /// pending (durable at the next commit).
    func writeData(_ volume: Volume, offset: UInt64, length: Int, data: UnsafeMutableRawPointer, owner: AnyObject,
                   bound: String?, deadline: Int64? = nil, completion: @escaping (Result<Void, RemapError>) -> Void) {
        whenWritable(volume) { [self] in
            beginVolumeWrite(volume)
            planWrite(volume, offset: offset, length: length, data: data, owner: owner, bound: bound, deadline: deadline) { [self] result in
                endVolumeWrite(volume)
                completion(result)
            }
        }
    }

    func planWrite(_ volume: Volume, offset: UInt64, length: Int, data: UnsafeMutableRawPointer, owner: AnyObject,
                           bound: String?, deadline: Int64?, completion: @escaping (Result<Void, RemapError>) -> Void) {
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
                for: volume, offset: offset, source: source, deadline: deadline,
                retry: { [self] in
                    planWrite(volume, offset: offset, length: length, data: data, owner: owner, bound: bound,
                              deadline: $0, completion: completion)
                },
                fail: { completion(.failure(error)) })
        }
        willWrite(volume, newMappings: plan.newMappings, copies: plan.copies)
        beginDrawing(source)
        for copy in plan.copies { copying[ChunkKey(volume: volume.key, chunk: copy.virtualChunk)] = [] }
        let progress = Progress(remaining: plan.segments.count + plan.copies.count)
        let epoch = beginIO()
        let finish = { [self] in
            endIO(epoch)
            didWrite(volume, offset: offset, length: length)
            if progress.failure == 0 { markWritten(volume, offset: offset, length: length) }
            endDrawing(source)
            completion(progress.failure == 0
                ? .success(()) : .failure(.io(errno: -progress.failure, context: "writing the supplier")))
        }
        for segment in plan.segments {
            guard case .supplier(let index, let supplierOffset) = segment.target else { continue }
            let fd = supplierFD(pool: volume.pool, index: index)
            ring.writeFully(fd: fd, from: data + segment.bufferOffset, count: segment.length, offset: supplierOffset) { result in
                _ = owner  // the data lives until the write completes
                progress.complete(result)
                if progress.remaining == 0 { finish() }
            }
        }
        for copy in plan.copies {
            copyOnWrite(volume, copy, data: data, owner: owner) { [self] result in
                copyLanded(ChunkKey(volume: volume.key, chunk: copy.virtualChunk))
                progress.complete(result)
                if progress.remaining == 0 { finish() }
            }
        }
        if progress.remaining == 0 { finish() }
    }

    /// Fills a new chunk: the old chunk's bytes (unless the write covers it
    /// whole) with the write's part laid over them, written as one piece.
    private func copyOnWrite(_ volume: Volume, _ copy: CopyOnWrite, data: UnsafeMutableRawPointer, owner: AnyObject,
                             _ handler: @escaping (Int32) -> Void) {
        let pool = volume.pool
        let chunkBytes = Int(min(pool.chunkSize, volume.sizeBytes - copy.virtualChunk * pool.chunkSize))
        let buffer = IOBuffer(count: chunkBytes)
        let target = pool.location(of: copy.newPhysical)
        let targetFD = supplierFD(pool: pool, index: target.supplier)
        let writeWhole = { [self] in
            memcpy(buffer.pointer + Int(copy.offsetInChunk), data + copy.bufferOffset, copy.length)
            _ = owner
            ring.writeFully(fd: targetFD, from: buffer.pointer, count: chunkBytes, offset: target.offset) { result in
                _ = buffer  // lives until the write completes
                handler(result)
            }
        }
        if copy.whole { return writeWhole() }
        let source = pool.location(of: copy.oldPhysical)
        ring.readFully(fd: supplierFD(pool: pool, index: source.supplier), into: buffer.pointer, count: chunkBytes,
                       offset: source.offset) { result in
            if result < 0 { return handler(result) }
            writeWhole()
        }
    }

    // MARK: - Read

    /// Reads `length` bytes of `volume` (or snapshot) at `offset` into
    /// `data` (kept alive by `owner`); `completion` gets 0 or -errno on the
    /// engine thread. `segments` says which parts were holes.
    func readData(_ volume: Volume, offset: UInt64, length: Int, data: UnsafeMutableRawPointer, owner: AnyObject,
                  completion: @escaping (_ result: Int32, _ segments: [IOSegment]) -> Void) {
        if let busy = chunkBeingCopied(volume, offset: offset, length: length) {
            copying[busy]!.append { [self] in  // invariant: found just above
                readData(volume, offset: offset, length: length, data: data, owner: owner, completion: completion)
            }
            return
        }
        let segments = volume.readPlan(offset: offset, length: length)
        let progress = Progress(remaining: segments.count)
        let epoch = beginIO()
        let finish = { [self] in
            endIO(epoch)
            completion(progress.failure, segments)
        }
        for segment in segments {
            switch segment.target {
            case .zeros:
                memset(data + segment.bufferOffset, 0, segment.length)
                progress.remaining -= 1
            case .supplier(let index, let supplierOffset):
                let fd = supplierFD(pool: volume.pool, index: index)
                ring.readFully(fd: fd, into: data + segment.bufferOffset, count: segment.length, offset: supplierOffset) { result in
                    _ = owner  // the buffer lives until the read completes
                    progress.complete(result)
                    if progress.remaining == 0 { finish() }
                }
            }
        }
        if progress.remaining == 0 { finish() }
    }
}
