import Glibc
import RemapCore
import RemapStore

/// Pools on the control plane: creating, deleting, growing, listing them.
extension Engine {
    func info(_ pool: Pool) -> PoolInfo {
        pool.info(volumes: volumes.values.filter { $0.pool === pool })
    }

    public func poolInfos() -> [PoolInfo] {
        (try? call { [self] reply in reply(.success(pools.values.map(info).sorted { $0.name < $1.name })) }) ?? []
    }

    public func poolInfo(named name: String) throws(RemapError) -> PoolInfo {
        try call { [self] reply in
            reply(pools[name].map { .success(info($0)) } ?? .failure(.notFound(kind: "pool", name: name)))
        }
    }

    /// Creates a pool and its suppliers (files are created and allocated on
    /// the caller's thread, never the engine's), durably.
    public func createPool(_ spec: PoolSpec) throws(RemapError) -> (PoolInfo, created: Bool) {
        try Name.validate(spec.name, kind: "pool")
        try Pool.validate(chunkSize: spec.chunkSize)
        guard (1...Pool.maximumSuppliers).contains(spec.suppliers.count) else {
            throw .invalidArgument("a pool needs 1 to \(Pool.maximumSuppliers) suppliers, got \(spec.suppliers.count)")
        }
        guard Set(spec.suppliers.map(\.path)).count == spec.suppliers.count else {
            throw .invalidArgument("the same supplier path appears twice")
        }
        // Refused before any file is made (a block device's size is known once it is open).
        try Pool.checkChunkCount(spec.suppliers.reduce(UInt64(0)) { $0 + ($1.sizeBytes ?? 0) / spec.chunkSize }, of: spec.name,
                                 chunkSize: spec.chunkSize, maximum: limits.maxChunksPerPool)
        let existing: PoolInfo? = try call { [self] reply in
            if let pool = pools[spec.name] {
                let same = pool.chunkSize == spec.chunkSize && pool.suppliers.count == spec.suppliers.count
                    && zip(spec.suppliers, pool.suppliers).allSatisfy { $0.describes($1) }
                return reply(same ? .success(info(pool)) : .failure(.alreadyExists(
                    kind: "pool", name: spec.name, detail: "pool '\(spec.name)' exists with another spec")))
            }
            guard !poolsInCreation.contains(spec.name) else {
                return reply(.failure(.inUse("pool '\(spec.name)' is being created by another request")))
            }
            poolsInCreation.insert(spec.name)
            reply(.success(nil))
        }
        if let existing { return (existing, false) }
        var made: [(supplier: Supplier, fd: Int32)] = []
        let pool: Pool
        do throws(RemapError) {
            for supplier in spec.suppliers { made.append(try SupplierFile.make(supplier, under: supplierDirectory)) }
            pool = try Pool(name: spec.name, chunkSize: spec.chunkSize, suppliers: made.map(\.supplier),
                            maximumChunks: limits.maxChunksPerPool)
        } catch {
            SupplierFile.discard(made)
            post { [self] in poolsInCreation.remove(spec.name) }
            throw error
        }
        let fds = UncheckedBox(made.map(\.fd))
        let installed = UncheckedBox(pool)
        var changes: [MetadataChange] = [.createPool(name: spec.name, chunkSize: spec.chunkSize)]
        for (ordinal, entry) in made.enumerated() {
            changes.append(.addSupplier(pool: spec.name, ordinal: ordinal, supplier: entry.supplier))
        }
        changes += pool.segments.map { .addSegment(pool: spec.name, segment: storedSegment($0, of: pool)) }
        let creation = changes
        do throws(RemapError) {
            return try call { [self] reply in
                submit(CommitJob(syncFDs: [], changes: creation) { _ in }) { [self] result in
                    poolsInCreation.remove(spec.name)
                    if case .success = result {
                        pools[spec.name] = installed.value
                        install(fds.value, for: installed.value)
                        prepareChunks(installed.value)
                    }
                    reply(result.map { (info(installed.value), true) })
                }
            }
        } catch {
            SupplierFile.discard(made)
            throw error
        }
    }

    /// Deletes an empty pool; file suppliers remap created are removed.
    public func deletePool(named name: String) throws(RemapError) {
        let suppliers: [Supplier] = try call { [self] reply in
            guard let pool = pools[name] else { return reply(.failure(.notFound(kind: "pool", name: name))) }
            let count = volumes.values.filter { $0.pool === pool }.count
            guard count == 0 else { return reply(.failure(.inUse("pool '\(name)' still has \(count) volume(s)"))) }
            // Snapshots outlive their volume; their chunks are in the pool too.
            let kept = snapshots.values.filter { $0.pool === pool }.count
            guard kept == 0 else { return reply(.failure(.inUse("pool '\(name)' still has \(kept) snapshot(s)"))) }
            guard !leaving.contains(where: { $0.pool === pool }) else {
                return reply(.failure(.inUse("pool '\(name)' has deletions whose commit is still being retried")))
            }
            pools[name] = nil
            let fds = supplierFDs.removeValue(forKey: name) ?? []
            submit(CommitJob(syncFDs: [], changes: [.deletePool(name: name)]) { _ in }) { [self] result in
                switch result {
                case .success:
                    for fd in fds { close(fd) }
                    reply(.success(pool.suppliers))
                case .failure(let error):
                    pools[name] = pool
                    supplierFDs[name] = fds
                    reply(.failure(error))
                }
            }
        }
        for supplier in suppliers where supplier.kind == .file { unlink(supplier.path) }
    }

    /// Adds a supplier to a live pool; its space is usable at once.
    public func addSupplier(toPool name: String, _ spec: SupplierSpec) throws(RemapError) -> PoolInfo {
        let before = try poolInfo(named: name)
        // Refused before the file is made; checked again below with the real size.
        try Pool.checkChunkCount(before.capacityBytes / before.chunkSizeBytes + (spec.sizeBytes ?? 0) / before.chunkSizeBytes,
                                 of: name, chunkSize: before.chunkSizeBytes, maximum: limits.maxChunksPerPool)
        let made = try SupplierFile.make(spec, under: supplierDirectory)
        do throws(RemapError) {
            return try call { [self] reply in
                guard let pool = pools[name] else { return reply(.failure(.notFound(kind: "pool", name: name))) }
                guard made.supplier.sizeBytes >= pool.chunkSize else {
                    return reply(.failure(.invalidArgument("supplier '\(made.supplier.path)' is smaller than one chunk (\(pool.chunkSize) bytes)")))
                }
                if let refusal = changeRefusal(pool) { return reply(.failure(refusal)) }
                do throws(RemapError) {
                    try pool.checkRoom(for: made.supplier.sizeBytes / pool.chunkSize, maximum: limits.maxChunksPerPool)
                } catch {
                    return reply(.failure(error))
                }
                let segment = StoredSegment(firstChunk: pool.allocator.capacity, supplierID: made.supplier.id,
                                            supplierOffset: 0, chunks: made.supplier.sizeBytes / pool.chunkSize)
                let changes: [MetadataChange] = [
                    .addSupplier(pool: name, ordinal: pool.suppliers.count, supplier: made.supplier),
                    .addSegment(pool: name, segment: segment),
                ]
                submit(CommitJob(syncFDs: [], changes: changes) { _ in }) { [self] result in
                    if case .success = result {
                        // invariant: checked above that the supplier holds at least one chunk
                        _ = try? pool.add(made.supplier)
                        install((supplierFDs[name] ?? []) + [made.fd], for: pool)
                        events.record(.poolGrown, pool: name, detail: "supplier \(made.supplier.path) added")
                        chunksReleased(pool)
                    }
                    reply(result.map { info(pool) })
                }
            }
        } catch {
            SupplierFile.discard([made])
            throw error
        }
    }

    // MARK: - Settings and growth

    public func updatePool(named name: String, onNoSpace: NoSpacePolicy?, thresholds: [Int]?) throws(RemapError) -> PoolInfo {
        if case .queue(let seconds)? = onNoSpace, !(1...NoSpacePolicy.maximumQueueSeconds).contains(seconds) {
            throw .invalidArgument("queueSeconds must be from 1 to \(NoSpacePolicy.maximumQueueSeconds)")
        }
        if let thresholds {
            guard thresholds.count <= 10, thresholds.allSatisfy({ (1...100).contains($0) }), Set(thresholds).count == thresholds.count else {
                throw .invalidArgument("lowSpaceThresholds must be at most 10 distinct percentages from 1 to 100")
            }
        }
        return try call { [self] reply in
            guard let pool = pools[name] else { return reply(.failure(.notFound(kind: "pool", name: name))) }
            if let onNoSpace { pool.onNoSpace = onNoSpace }
            if let thresholds { pool.lowSpaceThresholds = thresholds.sorted() }
            var seconds = 0
            if case .queue(let queue) = pool.onNoSpace { seconds = queue }
            pending.append(.setPoolSettings(name: name, queueSeconds: seconds, thresholds: pool.lowSpaceThresholds))
            checkThresholds()
            commit { [self] result in reply(result.map { info(pool) }) }
        }
    }

    /// Grows a file supplier to `sizeBytes` (allocated on the host like the
    /// rest of it); the new space is usable at once.
    public func growSupplier(pool name: String, supplier id: String, to sizeBytes: UInt64) throws(RemapError) -> PoolInfo {
        let (fd, supplier): (Int32, Supplier) = try call { [self] reply in
            guard let pool = pools[name] else { return reply(.failure(.notFound(kind: "pool", name: name))) }
            guard let index = pool.suppliers.firstIndex(where: { $0.id == id || $0.path == id }) else {
                return reply(.failure(.notFound(kind: "supplier", name: id)))
            }
            if let refusal = changeRefusal(pool) { return reply(.failure(refusal)) }
            // Refused before the file grows.
            do throws(RemapError) {
                try pool.checkRoom(for: pool.chunksAdded(growing: index, to: sizeBytes), maximum: limits.maxChunksPerPool)
            } catch {
                return reply(.failure(error))
            }
            do throws(RemapError) {
                reply(.success((try lendSupplierFD(pool: pool, index: index), pool.suppliers[index])))
            } catch {
                reply(.failure(error))
            }
        }
        defer { close(fd) }
        guard supplier.kind == .file else {
            throw .invalidArgument("block device suppliers are used whole; grow the device and add it again")
        }
        guard sizeBytes > supplier.sizeBytes else {
            throw .invalidArgument("sizeBytes \(sizeBytes) must be larger than the supplier's \(supplier.sizeBytes) bytes; suppliers do not shrink")
        }
        #if DEBUG
        whileGrowingSupplier?()
        #endif
        try SupplierFile.grow(fd: fd, supplier, to: sizeBytes)
        return try call { [self] reply in
            guard let pool = pools[name], let index = pool.suppliers.firstIndex(where: { $0.id == supplier.id }) else {
                return reply(.failure(.notFound(kind: "pool", name: name)))
            }
            var changes: [MetadataChange] = [.setSupplierSize(id: supplier.id, sizeBytes: sizeBytes)]
            do throws(RemapError) {
                if let segment = try pool.grow(supplier: index, to: sizeBytes, maximumChunks: limits.maxChunksPerPool) {
                    changes.append(.addSegment(pool: name, segment: storedSegment(segment, of: pool)))
                }
            } catch {
                // Another growth took the room meanwhile; the file stays larger than the pool uses.
                return reply(.failure(error))
            }
            pending += changes
            commit { [self] result in
                if case .success = result {
                    events.record(.poolGrown, pool: name, detail: "supplier \(supplier.path) grew to \(sizeBytes) bytes")
                    chunksReleased(pool)
                }
                reply(result.map { info(pool) })
            }
        }
    }

    // MARK: - Pool check

    /// Checks that every chunk the pool counts as used is mapped by some
    /// image (or is prepared, or being reclaimed), that every mapped chunk
    /// is counted as used, and that no chunk is mapped twice except by
    /// images of one family at the same place. Waits (a few seconds at
    /// most) for reclaim in flight to settle first. The engine thread only
    /// hands out its maps and allocator (copy-on-write values); the check
    /// runs on the caller's thread, on a bitmap (see `PoolCheck.init`).
    public func checkPool(named name: String) throws(RemapError) -> PoolCheck {
        let input: PoolCheck.Input = try call { [self] reply in
            guard pools[name] != nil else { return reply(.failure(.notFound(kind: "pool", name: name))) }
            whenSettled(name) { [self] in
                guard let pool = pools[name] else { return reply(.failure(.notFound(kind: "pool", name: name))) }
                reply(.success(checkInput(pool)))
            }
        }
        return PoolCheck(input)
    }

    /// How long a pool check waits for reclaim to settle before it checks
    /// what is there.
    static let settleTimeout: Int64 = 5_000_000_000

    /// Runs `body` once nothing of pool `name` is being freed, zeroed or
    /// prepared — now, or after the batch of completions that settles it
    /// (`wakeSettleWaiters`, from `tick`), or after `settleTimeout` —
    /// committing meanwhile what holds it up.
    func whenSettled(_ name: String, _ body: @escaping () -> Void) {
        assertEngineThread()
        let releasing = hasPendingReleases
        guard settling(name, releasing: releasing) else { return body() }
        settleWaiters.append(SettleWaiter(pool: name, deadline: monotonicNanoseconds() + Self.settleTimeout,
                                          command: runningCommand ?? "checkPool", run: body))
        nudgeSettling(releasing: releasing)
    }

    /// The pool checks whose pool has settled, or whose wait is over, run.
    func wakeSettleWaiters(now: Int64) {
        guard !settleWaiters.isEmpty else { return }
        let releasing = hasPendingReleases
        var ready: [SettleWaiter] = []
        settleWaiters.removeAll { waiter in
            guard !settling(waiter.pool, releasing: releasing) || now >= waiter.deadline else { return false }
            ready.append(waiter)
            return true
        }
        if !settleWaiters.isEmpty { nudgeSettling(releasing: releasing) }
        for waiter in ready { timed(waiter.command) { waiter.run() } }
    }

    /// Chunks let go of by changes not yet durable are freed once they are.
    private var hasPendingReleases: Bool {
        volumes.values.contains { !$0.family.pendingReleases.isEmpty }
    }

    private func settling(_ name: String, releasing: Bool) -> Bool {
        !unmapped.isEmpty || !draining.isEmpty || reclaimJobs > 0 || preparingPools.contains(name) || releasing
    }

    /// Unmapped chunks and pending releases move on with the next commit.
    private func nudgeSettling(releasing: Bool) {
        if (!unmapped.isEmpty || releasing) && !commitInFlight { commit { _ in } }
    }

    /// Engine thread: what the check of `pool` reads, copied in O(images).
    private func checkInput(_ pool: Pool) -> PoolCheck.Input {
        let images = volumes.values.filter { $0.pool === pool } + snapshots.values.filter { $0.pool === pool }
            + leaving.filter { $0.pool === pool }
        var families: [ObjectIdentifier: Int] = [:]
        var maps: [[ChunkMap]] = []
        for image in images {
            let family = ObjectIdentifier(image.family)
            if let index = families[family] {
                maps[index].append(image.map)
            } else {
                families[family] = maps.count
                maps.append([image.map])
            }
        }
        return PoolCheck.Input(pool: pool.name, allocator: pool.allocator, stashed: pool.stashedChunkList, families: maps)
    }
}

/// A pool check waiting for its pool to settle (`Engine.whenSettled`).
struct SettleWaiter {
    var pool: String
    var deadline: Int64
    /// The command it is timed under when it runs.
    var command: String
    var run: () -> Void
}
