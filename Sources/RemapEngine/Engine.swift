import CURing
import Dispatch
import Glibc
import RemapCore
import RemapLog
import RemapStore
import Synchronization

/// The data-path engine: one io_uring ring and the thread that drives it.
///
/// The engine thread owns the live state (pools, volumes, chunk maps,
/// allocators, pending metadata). Other threads never touch it: they `post`
/// work to the engine (woken through an eventfd the ring watches) and wait
/// for the answer. A control-plane command therefore runs between two data
/// requests, which gives every point-in-time operation one clear order.
public final class Engine: @unchecked Sendable {  // mutable state is only touched on the engine thread
    /// Which I/O engine runs, reported by `GET /v1/version`.
    public var name: String { ring.name }
    /// New file suppliers must lie under this directory.
    public let supplierDirectory: String

    private let inbox: Inbox
    private let wakeBuffer = IOBuffer(count: 8)
    let store: MetadataStore
    let committer: Committer
    private let stopped = DispatchSemaphore(value: 0)

    let ring: any IOQueue
    /// Every supplier I/O goes through it (the fault seam).
    let suppliers: SupplierIO
    /// Faults injected into supplier I/O and commits (`--fault-injection`).
    public let faults: FaultInjector
    private(set) var pools: [String: Pool] = [:]
    var volumes: [String: Volume] = [:]
    /// Open supplier files by pool name, in supplier order; none for an
    /// offline pool.
    var supplierFDs: [String: [Int32]] = [:]
    var nextVolumeKey: Int64 = 1
    /// Volumes whose creation is not yet durable.
    var undurable: Set<Int64> = []

    /// Metadata changes not durable yet, in the order they happened: those
    /// of completed writes and control-plane changes, and those of a failed
    /// commit, which stay here until a commit of them succeeds.
    var pending: [MetadataChange] = []
    /// What runs once the changes now in `pending` are durable.
    var durableActions: [() -> Void] = []
    /// Pools whose pending changes hold copy-on-write mappings: those
    /// replace mappings to durable data, so they may only commit after the
    /// pool's suppliers are synced.
    var copyPools: Set<String> = []
    /// The metadata commit in flight (at most one), and what waits for the next.
    var commitInFlight = false
    var commitWaiters: [CommitWaiter] = []
    /// The last metadata commit failed with this; nil once one succeeds.
    var commitFailure: RemapError?
    /// Metadata commits that failed since start, for /metrics.
    var commitFailures: UInt64 = 0
    /// Chunks mapped by a write that has not completed yet; they join
    /// `pending` when a write into them succeeds, and are given back when
    /// every write into them failed (`writers` counts those in flight).
    var unsettled: [ChunkKey: UnsettledChunk] = [:]
    /// Snapshots by id.
    var snapshots: [String: Volume] = [:]
    /// Deleted volumes and snapshots whose deletion is not durable yet: gone
    /// from the API and NBD, still in their families (see `beginLeaving`).
    var leaving: [Volume] = []
    /// The mapping layers (see RemapCore's Snapshot.swift), by key.
    var layers: [Int64: LayerNode] = [:]
    /// Chunks being copied on write: reads and writes of them wait.
    var copying: [ChunkKey: [() -> Void]] = [:]
    /// Volumes an import is filling: no export, no delete, no patch.
    var importing: Set<Int64> = []
    /// Long-running operations (imports), newest last.
    public let operations = OperationLog()
    /// Reference counts of families, by the fingerprint they were counted at.
    var usageCache: [ObjectIdentifier: (fingerprint: [UInt64], counts: [UInt8])] = [:]
    /// Zeroing jobs of reclaimed chunks, and commits freeing chunks, in flight.
    var reclaimJobs = 0
    /// Freed chunks whose zeroing failed (or whose pool cannot do I/O): they
    /// stay allocated and dirty, and are tried again from `tick`.
    var reclaimRetries: [(pool: Pool, chunks: [UInt64], due: Int64)] = []
    /// Chunks a failed write drew from a reservation: once zeroed and free
    /// again they go back to it (not before: a pooled reservation is always
    /// backed by free chunks).
    var reclaimHeirs: [ReclaimKey: Reservation] = [:]
    /// Writes (and TRIM/WRITE_ZEROES) in flight per volume key.
    var volumeWrites: [Int64: Int] = [:]
    /// Volumes a snapshot is waiting on: writes arriving meanwhile, held.
    var frozenVolumes: [Int64: [() -> Void]] = [:]
    /// What runs once a volume's writes in flight are done.
    var quiesceWaiters: [Int64: [() -> Void]] = [:]
    /// Content streams and other readers of a snapshot outside NBD.
    var snapshotReaders: [Int64: Int] = [:]
    var lastCommit = monotonicNanoseconds()
    static let commitInterval: Int64 = 5_000_000_000

    /// Data I/O in flight, by the epoch it started in. A chunk unmapped in
    /// epoch E is zeroed and reused only when no I/O of an epoch <= E is left,
    /// so no late read or write can touch it in its next life.
    var epoch: UInt64 = 0
    var ioInFlight: [UInt64: Int] = [:]
    /// Chunks unmapped by TRIM/WRITE_ZEROES since the last commit.
    var unmapped: [(pool: Pool, chunk: UInt64)] = []
    /// Committed as unmapped, waiting for older I/O to finish before zeroing.
    var draining: [(epoch: UInt64, pool: Pool, chunks: [UInt64])] = []
    /// Writes waiting for prepared chunks.
    var waitingForChunks: [() -> Void] = []
    /// Pools with a chunk preparation commit in flight.
    var preparingPools: Set<String> = []
    static let stashTarget = 1024
    static let stashLowWater = 512

    private var listeners: [Int32] = []
    /// The credentials a TCP listener demands (STARTTLS); none on the unix socket.
    private var listenerCredentials: [Int32: TLSCredentials] = [:]
    private var connections: [ObjectIdentifier: NBDConnection] = [:]
    private(set) var admission = NBDAdmission()
    var exportUsers: [Int64: Int] = [:]
    /// Extra NBD exports: name → the volume and the reservation writes draw on.
    var extraExports: [String: (volume: Volume, reservation: String?)] = [:]
    /// Connections per extra export name, so an export in use is not deleted.
    var extraExportUsers: [String: Int] = [:]
    /// What happened, for `GET /v1/events`.
    public let events = EventLog()
    /// Thresholds each pool is above (a crossing fires once).
    var crossedThresholds: [String: Set<Int>] = [:]
    /// Writes waiting for space under onNoSpace queueSeconds.
    var spaceWaiters: [(deadline: Int64, pool: Pool, retry: () -> Void, fail: () -> Void)] = []
    /// When the last pool.no-space event was logged, per pool (they are rate-limited).
    var lastNoSpaceEvent: [String: Int64] = [:]
    /// The metadata filesystem is nearly full: new chunks are refused so a
    /// commit never fails for space (see `MetadataReserve`).
    public var metadataShort: Bool { metadataReserve?.short ?? false }
    /// Keeps room for metadata commits; set before `start()`.
    public var metadataReserve: MetadataReserve?
    /// Pools being created (their suppliers are being made off this thread).
    private var poolsInCreation: Set<String> = []
    private var statistics = DataPathStatistics()
    /// The command the engine thread is running (see `timed`); nil while it serves I/O.
    private(set) var runningCommand: String?
    private var stopping = false
    private var heartbeat: (interval: Int64, ping: @Sendable () -> Void, last: Int64)?
    private var finalCommitSubmitted = false
    private var finished = false

    struct ChunkKey: Hashable {
        var volume: Int64
        var chunk: UInt64
    }

    struct ReclaimKey: Hashable {
        var pool: String
        var chunk: UInt64
    }

    /// Loads every pool and volume from `store`, opens the suppliers and
    /// zeroes chunks a crash left dirty. Runs on the caller's thread, before
    /// `start()`.
    /// The I/O engine to run.
    public enum Kind: String, Sendable, CaseIterable {
        /// io_uring, else (disabled by sysctl, seccomp, an old kernel) threads.
        case auto
        case ioUring = "io_uring"
        case threads
    }

    public init(store: MetadataStore, supplierDirectory: String, kind: Kind = .auto, ringEntries: UInt32 = 256,
                faults: FaultInjector = FaultInjector()) throws(RemapError) {
        self.store = store
        self.supplierDirectory = supplierDirectory
        self.faults = faults
        self.committer = Committer(store: store, faults: faults)
        let ring: any IOQueue
        switch kind {
        case .ioUring:
            ring = try Ring(entries: ringEntries)
        case .threads:
            ring = try ThreadPoolQueue()
        case .auto:
            do {
                ring = try Ring(entries: ringEntries)
            } catch {
                log.notice("io_uring is unavailable (\(error)); serving with the portable threads engine")
                ring = try ThreadPoolQueue()
            }
        }
        self.ring = ring
        let inbox = Inbox(eventFD: try systemCall("eventfd") { eventfd(0, Int32(EFD_CLOEXEC)) })
        self.inbox = inbox
        self.suppliers = SupplierIO(ring: ring, faults: faults) { inbox.deliver($0) }
        try load()
    }

    private func load() throws(RemapError) {
        for stored in try store.pools() {
            let indexByID = Dictionary(uniqueKeysWithValues: stored.suppliers.enumerated().map { ($1.id, $0) })
            var segments: [Pool.Segment] = []
            for segment in stored.segments {
                guard let index = indexByID[segment.supplierID] else {
                    throw .internal("metadata: segment of pool '\(stored.name)' names unknown supplier \(segment.supplierID)")
                }
                segments.append(Pool.Segment(firstChunk: segment.firstChunk, supplier: index,
                                             supplierOffset: segment.supplierOffset, chunks: segment.chunks))
            }
            let pool = try Pool(name: stored.name, chunkSize: stored.chunkSize, suppliers: stored.suppliers, segments: segments)
            if segments.isEmpty {
                // A state directory from before segments were stored: record the layout.
                try store.apply(pool.segments.map { .addSegment(pool: pool.name, segment: storedSegment($0, of: pool)) })
            }
            pool.onNoSpace = stored.queueSeconds > 0 ? .queue(seconds: stored.queueSeconds) : .error
            pool.lowSpaceThresholds = stored.thresholds
            pools[pool.name] = pool
            openSuppliers(of: pool)
        }
        var byKey: [Int64: Volume] = [:]
        for stored in try store.volumes() {
            guard let pool = pools[stored.pool] else {
                throw .internal("metadata: volume '\(stored.name)' names missing pool '\(stored.pool)'")
            }
            let volume = Volume(key: stored.key, id: stored.id, name: stored.name, pool: pool,
                                sizeBytes: stored.sizeBytes, createdAt: stored.createdAt, labels: stored.labels)
            volume.layer = stored.layer
            volume.originSnapshot = stored.originSnapshot
            volumes[volume.name] = volume
            byKey[volume.key] = volume
            nextVolumeKey = max(nextVolumeKey, volume.key + 1, stored.layer + 1)
        }
        for stored in try store.reservations() {
            guard let volume = byKey[stored.volume] else { continue }
            let reservation = Reservation(
                id: stored.id, name: stored.name, volume: volume,
                kind: stored.firstChunk.map { .range(firstChunk: $0) } ?? .pooled,
                role: Reservation.Role(rawValue: stored.role) ?? .plain, chunkCount: stored.chunkCount,
                ttlSeconds: stored.ttlSeconds, expiresAt: stored.expiresAt)
            if reservation.kind == .pooled {
                reservation.setRemaining(stored.remaining)
                volume.pool.pooledReservedChunks += stored.remaining
            }
            volume.reservations.append(reservation)
        }
        let orphans = try loadMappings(volumes: byKey)
        try store.apply(orphans)
        for stored in try store.exports() {
            guard let volume = byKey[stored.volume] else { continue }
            extraExports[stored.name] = (volume, stored.reservation)
        }
        // Chunks freed (or prepared for writes) before a crash may hold
        // data nobody maps: zero them. Mapped ones just lose the mark.
        // Chunks that cannot be zeroed now (the pool is offline, or zeroing
        // fails) stay allocated and dirty, and are tried again later.
        for (poolName, chunks) in try store.dirtyChunks() {
            guard let pool = pools[poolName] else { continue }
            let mapped = chunks.filter { pool.allocator.isUsed($0) }
            let free = chunks.filter { !pool.allocator.isUsed($0) && $0 < pool.allocator.capacity }
            try store.apply(mapped.map { .clearDirty(pool: poolName, physicalChunk: $0) })
            guard !free.isEmpty else { continue }
            for chunk in free { pool.allocator.markUsed(chunk) }
            guard pool.state != .offline else {
                reclaimRetries.append((pool, free, 0))
                continue
            }
            let outcome = Committer.perform(zeroJob(pool: pool, chunks: free), store: store, faults: faults)
            noteFailedSyncs(outcome.failedSyncs, during: "write-back (fdatasync) of zeroed chunks")
            switch outcome.zeroed {
            case .success?:
                for chunk in free { pool.allocator.release(chunk) }
            case .failure(let error)?:
                log.warning("zeroing \(free.count) freed chunk(s) of pool '\(poolName)' at start failed: \(error); tried again later")
                reclaimRetries.append((pool, free, monotonicNanoseconds() + Self.reclaimRetryInterval))
            case nil:
                break
            }
        }
    }

    func storedSegment(_ segment: Pool.Segment, of pool: Pool) -> StoredSegment {
        StoredSegment(firstChunk: segment.firstChunk, supplierID: pool.suppliers[segment.supplier].id,
                      supplierOffset: segment.supplierOffset, chunks: segment.chunks)
    }

    /// Creates pool `name` on one new file supplier at `path` if no pool
    /// exists yet. Runs before `start()`.
    public func bootstrapPool(name: String, path: String, sizeBytes: UInt64, chunkSize: UInt64 = Pool.defaultChunkSize) throws(RemapError) {
        guard pools.isEmpty else { return }
        let (supplier, fd) = try SupplierFile.create(path: path, sizeBytes: sizeBytes, preallocate: true)
        let pool: Pool
        do throws(RemapError) {
            pool = try Pool(name: name, chunkSize: chunkSize, suppliers: [supplier], maximumChunks: limits.maxChunksPerPool)
        } catch {
            SupplierFile.discard([(supplier, fd)])
            throw error
        }
        try store.apply([.createPool(name: name, chunkSize: chunkSize), .addSupplier(pool: name, ordinal: 0, supplier: supplier)]
            + pool.segments.map { .addSegment(pool: name, segment: storedSegment($0, of: pool)) })
        pools[name] = pool
        supplierFDs[name] = [fd]
    }

    // MARK: - Running

    /// Calls `ping` from the engine thread about every `interval`
    /// nanoseconds, so a watchdog sees the data path itself alive. Set
    /// before `start()`.
    public func setHeartbeat(every interval: Int64, _ ping: @escaping @Sendable () -> Void) {
        heartbeat = (interval, ping, 0)
    }

    /// Starts the engine and committer threads.
    public func start() {
        committer.start()
        armWake()
        post { [self] in
            for pool in pools.values {
                if pool.allocator.capacity > limits.maxChunksPerPool {
                    // Served as it is (its data is there); it just cannot grow.
                    log.warning("pool '\(pool.name)' has \(pool.allocator.capacity) chunks, more than --max-chunks-per-pool (\(limits.maxChunksPerPool)): it is served, but suppliers can be neither added nor grown")
                }
                prepareChunks(pool)
                // Thresholds already crossed before this start are not news.
                crossedThresholds[pool.name] = Set(pool.lowSpaceThresholds.filter { pool.committedPercent >= Double($0) })
            }
        }
        startThread(name: "remap-engine") { [self] in
            ring.activate()
            while !finished {
                var wait = heartbeat.map { min($0.interval, 1_000_000_000) } ?? 1_000_000_000
                if let resume = admission.untilNextResume(now: monotonicNanoseconds()) { wait = min(wait, resume) }
                ring.run(timeoutNanoseconds: wait)
                timed("tick", countingCPU: false) { tick() }
            }
            stopped.signal()
        }
    }

    /// Serves NBD on a listening socket; with `tls`, clients must start TLS
    /// before anything else (NBDConnection+TLS.swift).
    public func serveNBD(listener fd: Int32, tls: TLSCredentials? = nil) {
        post { [self] in
            if listeners.isEmpty && admission.descriptorRoom < limits.nbdMaxConnections {
                log.warning("RLIMIT_NOFILE leaves room for about \(admission.descriptorRoom) NBD clients, fewer than --nbd-max-connections \(limits.nbdMaxConnections)")
            }
            listeners.append(fd)
            listenerCredentials[fd] = tls
            accept(on: fd, tls: tls)
        }
    }

    /// Stops accepting, lets every connection finish what is in flight,
    /// commits all pending metadata and ends the engine thread. Blocks.
    public func stop() {
        post { [self] in
            stopping = true
            for fd in listeners { shutdown(fd, Int32(SHUT_RDWR)) }
            for connection in connections.values { connection.endInput() }
            tick()
        }
        stopped.wait()
        committer.stop()
    }

    /// Runs `work` on the engine thread; `command` names it in the engine's
    /// timings (`remap_engine_command_seconds`), the caller's name by default.
    func post(_ command: String = #function, _ work: @escaping @Sendable () -> Void) {
        inbox.deliver(work, command: command)
    }

    private func armWake() {
        ring.readEvent(fd: inbox.eventFD, into: wakeBuffer.pointer) { [self] _ in
            for item in inbox.take() { timed(item.command, item.work) }
            if !finished { armWake() }
        }
    }

    /// Runs `work` and records how long it held the engine thread (no NBD
    /// request is served meanwhile) under `command`, which is also the name
    /// the commits it submits report their completions under; with
    /// `countingCPU`, also the thread's CPU time.
    func timed(_ command: String, countingCPU: Bool = true, _ work: () -> Void) {
        let outer = runningCommand
        runningCommand = command
        let cpuStarted = countingCPU ? threadCPUNanoseconds() : 0
        let started = monotonicNanoseconds()
        work()
        let seconds = Double(monotonicNanoseconds() - started) / 1e9
        let cpu = countingCPU ? Double(threadCPUNanoseconds() - cpuStarted) / 1e9 : nil
        statistics.engineCommands[command, default: EngineCommandStatistics()].observe(seconds, cpuSeconds: cpu)
        runningCommand = outer
    }

    /// The bounds in force; set before start(), read-only after.
    public var limits = Limits()
    private var lastSpaceCheck: Int64 = 0

    private func tick() {
        let now = monotonicNanoseconds()
        expireSpaceWaiters(now: now)
        if now - lastSpaceCheck >= 500_000_000 {
            lastSpaceCheck = now
            expireLeases(now: Int64(time(nil)))  // a lease ends once its whole second has passed
            checkThresholds()
            checkSuppliers()
            if let reserve = metadataReserve, reserve.check() == .recovered {
                for pool in pools.values { retrySpaceWaiters(pool) }
            }
        }
        // Idle or stuck clients cannot pile up.
        for connection in connections.values { connection.enforceDeadlines(now: now) }
        if !stopping {
            for listener in admission.resumable(now: now) { accept(on: listener, tls: listenerCredentials[listener]) }
        }
        if let beat = heartbeat {
            let now = monotonicNanoseconds()
            if now - beat.last >= beat.interval {
                beat.ping()
                heartbeat?.last = now
            }
        }
        if stopping && connections.isEmpty && !finalCommitSubmitted {
            finalCommitSubmitted = true
            commit { [self] result in
                if case .failure(let error) = result {
                    // Nothing acknowledged is lost (every FLUSH since the last
                    // successful commit failed), but say what was not kept.
                    log.error("the final metadata commit failed: \(error); changes made since the last successful commit are not durable")
                }
                finished = true
            }
            return
        }
        commitIfDue(now: monotonicNanoseconds())
        retryReclaims(now: monotonicNanoseconds())
    }

    private func accept(on fd: Int32, tls: TLSCredentials?) {
        ring.accept(fd: fd) { [self] result in
            if result >= 0 {
                if stopping || !admission.admits(result, serving: connections.count, limit: limits.nbdMaxConnections) {
                    close(result)
                } else {
                    var one: Int32 = 1
                    setsockopt(result, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    let connection = NBDConnection(fd: result, engine: self, credentials: tls)
                    connections[ObjectIdentifier(connection)] = connection
                    connection.greet()
                }
            } else {
                switch NBDAdmission.reaction(to: -result) {
                case .next:
                    break
                case .pause:
                    // Trying again at once would spin: the listener pauses.
                    if !stopping { admission.acceptFailed(listener: fd, error: -result, now: monotonicNanoseconds()) }
                    return
                case .stop:
                    // The listener was shut down (stop) or is broken.
                    if !stopping { log.error("NBD accept failed: \(String(cString: strerror(-result))): no more clients on this listener") }
                    return
                }
            }
            if !stopping { accept(on: fd, tls: tls) }
        }
    }

    // MARK: - Used by connections (engine thread)

    func supplierFD(pool: Pool, index: Int) -> Int32 {
        supplierFDs[pool.name]![index]  // invariant: every pool but an offline one has its fds; I/O on those is refused first
    }

    /// A volume's own export or an extra one, with the reservation it is bound to.
    /// Snapshots are exported read-only as `VOLUME@SNAPSHOT`; a volume being
    /// imported is not exported until the import is done.
    func export(named name: String) -> (volume: Volume, reservation: String?)? {
        if let volume = volumes[name] { return importing.contains(volume.key) ? nil : (volume, nil) }
        if let export = extraExports[name] { return importing.contains(export.volume.key) ? nil : export }
        if name.contains("@"), let snapshot = snapshots.values.first(where: { $0.exportName == name }) { return (snapshot, nil) }
        return nil
    }

    var exportNames: [String] {
        (Array(volumes.keys) + Array(extraExports.keys) + snapshots.values.map(\.exportName)).sorted()
    }

    func attach(_ volume: Volume, exportName: String) {
        exportUsers[volume.key, default: 0] += 1
        if extraExports[exportName] != nil { extraExportUsers[exportName, default: 0] += 1 }
    }

    func detach(_ volume: Volume, exportName: String?) {
        exportUsers[volume.key, default: 1] -= 1
        if let exportName, let users = extraExportUsers[exportName] { extraExportUsers[exportName] = users - 1 }
    }

    /// Counts a finished NBD request for /metrics.
    func record(command: String, bytes: Int, error: NBD.Error?, started: Int64) {
        var entry = statistics.commands[command] ?? CommandStatistics()
        entry.requests += 1
        entry.bytes += UInt64(bytes)
        if let error { entry.errors[error.name, default: 0] += 1 }
        entry.latency.observe(Double(monotonicNanoseconds() - started) / 1e9)
        statistics.commands[command] = entry
    }

    func connectionClosed(_ connection: NBDConnection) {
        connections[ObjectIdentifier(connection)] = nil
        if stopping { tick() }
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

    // MARK: - Control plane (any thread but the engine's; blocking)

    /// Runs `work` on the engine thread and waits for the answer it gives,
    /// possibly later (after a commit).
    /// `command` names it in the engine's timings: the caller's name by default.
    func call<T: Sendable>(_ command: String = #function,
                           _ work: @escaping @Sendable (_ reply: @escaping @Sendable (Result<T, RemapError>) -> Void) -> Void) throws(RemapError) -> T {
        let answer = Mutex<Result<T, RemapError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        post(command) {
            work { result in
                answer.withLock { $0 = result }
                done.signal()
            }
        }
        done.wait()
        // invariant: set before the semaphore was signalled
        return try answer.withLock { $0! }.get()
    }

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

    public func volumeInfos() -> [VolumeInfo] {
        (try? volumeInfos { engine in .success(Array(engine.volumes.values)) }) ?? []
    }

    public func volumeInfo(named name: String) throws(RemapError) -> VolumeInfo {
        // invariant: the gather yields exactly one volume or fails
        try volumeInfos { engine in
            engine.volumes[name].map { .success([$0]) } ?? .failure(.notFound(kind: "volume", name: name))
        }[0]
    }

    /// Infos sorted by name. A volume that shares chunks needs them counted
    /// for `guaranteedWritableBytes`: that is done on the caller's thread
    /// from the family's maps (copy-on-write values), never on the engine's.
    private func volumeInfos(_ gather: @escaping @Sendable (Engine) -> Result<[Volume], RemapError>) throws(RemapError) -> [VolumeInfo] {
        let gathered: [(info: VolumeInfo, map: ChunkMap, pooled: UInt64, chunkSize: UInt64, counts: FamilyCounts?)] = try call { [self] reply in
            reply(gather(self).map { list in
                list.sorted { $0.name < $1.name }.map { volume in
                    let pooled = volume.reservations.reduce(UInt64(0)) { $0 + ($1.kind == .pooled ? $1.remaining : 0) }
                    return (volume.info(sharedChunks: 0), volume.map, pooled, volume.pool.chunkSize, familyCounts(volume))
                }
            })
        }
        var counted: [ObjectIdentifier: [UInt8]] = [:]
        return gathered.map { item in
            guard let counts = item.counts else { return item.info }
            var info = item.info
            let family = counted[counts.family] ?? resolve(counts)
            counted[counts.family] = family
            let shared = FamilyView.usage(of: item.map, counts: family).shared
            info.guaranteedWritableBytes = min(info.sizeBytes, (item.map.mappedCount - min(shared, item.map.mappedCount) + item.pooled) * item.chunkSize)
            return info
        }
    }

    public func dataPathStatistics() -> DataPathStatistics {
        (try? call { [self] reply in
            var copy = statistics
            copy.connections = connections.count
            copy.metadataCommitFailures = commitFailures
            // `createPool(_:)` → `createPool`: a few fixed names, so few series.
            copy.engineCommands = [:]
            for (command, entry) in statistics.engineCommands {
                let name = String(command.prefix { $0 != "(" })
                copy.engineCommands[name, default: EngineCommandStatistics()].merge(entry)
            }
            reply(.success(copy))
        }) ?? DataPathStatistics()
    }

    /// Creates a volume, durably; returns it and whether it is new (false:
    /// one with the same name and spec existed already).
    public func createVolume(_ spec: VolumeSpec) throws(RemapError) -> (VolumeInfo, created: Bool) {
        try createVolume(spec, forImport: false)
    }

    /// `forImport`: the volume is not exported, patched or deleted until the
    /// import filling it is done.
    func createVolume(_ spec: VolumeSpec, forImport: Bool) throws(RemapError) -> (VolumeInfo, created: Bool) {
        try Name.validate(spec.name, kind: "volume")
        try Volume.validate(sizeBytes: spec.sizeBytes)
        try Labels.validate(spec.labels)
        return try call { [self] reply in
            guard let pool = pools[spec.pool] else { return reply(.failure(.notFound(kind: "pool", name: spec.pool))) }
            if extraExports[spec.name] != nil {
                return reply(.failure(.alreadyExists(kind: "export", name: spec.name,
                                                     detail: "an export named '\(spec.name)' exists; volume names share the export namespace")))
            }
            if let existing = volumes[spec.name] {
                var asked = spec.reservation
                if case .bytes(let bytes) = asked { asked = .bytes((bytes + pool.chunkSize - 1) / pool.chunkSize * pool.chunkSize) }
                guard existing.pool === pool, existing.sizeBytes == spec.sizeBytes, existing.labels == spec.labels,
                      existing.createdReservation == asked
                else {
                    return reply(.failure(.alreadyExists(
                        kind: "volume", name: spec.name,
                        detail: "volume '\(spec.name)' exists with another spec (\(existing.sizeBytes) bytes in pool '\(existing.pool.name)')")))
                }
                let info = existing.info
                if undurable.contains(existing.key) {
                    // Answer only once the first create's rows are durable.
                    commit { result in reply(result.map { (info, false) }) }
                } else {
                    reply(.success((info, false)))
                }
                return
            }
            if let refusal = changeRefusal(pool) { return reply(.failure(refusal)) }
            // Decided at once: a reservation the pool cannot back refuses the volume.
            let chunkSize = pool.chunkSize
            let reservedChunks: UInt64
            switch spec.reservation {
            case .none: reservedChunks = 0
            case .thick: reservedChunks = (spec.sizeBytes + chunkSize - 1) / chunkSize
            case .bytes(let bytes): reservedChunks = (bytes + chunkSize - 1) / chunkSize
            }
            guard pool.unreservedFreeChunks >= reservedChunks else {
                return reply(.failure(.noSpace(requestedBytes: reservedChunks * chunkSize, availableBytes: pool.freeBytes)))
            }
            let volume = Volume(key: nextVolumeKey, id: randomUUID(), name: spec.name, pool: pool,
                                sizeBytes: spec.sizeBytes, createdAt: utcTimestamp(), labels: spec.labels)
            nextVolumeKey += 1
            volumes[volume.name] = volume
            layers[volume.layer] = LayerNode(images: 1)
            undurable.insert(volume.key)
            if forImport { importing.insert(volume.key) }
            let stored = StoredVolume(key: volume.key, id: volume.id, name: volume.name, pool: pool.name,
                                      sizeBytes: volume.sizeBytes, createdAt: volume.createdAt, labels: volume.labels)
            pending.append(.createVolume(stored))
            durableActions.append { [self] in undurable.remove(volume.key) }
            // A failed commit keeps the volume: its rows are retried, and the
            // error says it is not durable yet.
            let finished: (Result<Void, RemapError>) -> Void = { result in reply(result.map { (volume.info, true) }) }
            let amount: ReservationSpec.Amount
            let role: Reservation.Role
            switch spec.reservation {
            case .none: return commit(finished)
            case .thick: (amount, role) = (.range(offsetBytes: 0, lengthBytes: spec.sizeBytes), .thick)
            case .bytes(let bytes): (amount, role) = (.pooled(bytes: bytes), .volumeDefault)
            }
            reserve(volume, ReservationSpec(amount: amount, ttlSeconds: nil, name: role.rawValue), role: role) { [self] result in
                switch result {
                case .success: finished(.success(()))
                case .failure(let error):
                    // Space went to others while chunks were being prepared: undo the volume.
                    volumes[volume.name] = nil
                    layers[volume.layer] = nil
                    undurable.remove(volume.key)
                    importing.remove(volume.key)
                    pending.append(.deleteVolume(key: volume.key))
                    pending.append(.deleteLayer(key: volume.layer))
                    reply(.failure(error))
                }
            }
        }
    }

    /// Deletes a volume; answers once the deletion is durable and its chunks
    /// are zeroed and free again.
    public func deleteVolume(named name: String) throws(RemapError) {
        try deleteImage { engine in engine.volumes[name].map { .success($0) } ?? .failure(.notFound(kind: "volume", name: name)) }
            delete: { [self] volume, marked, reply in
            if let users = exportUsers[volume.key], users > 0 {
                return reply(.failure(.inUse("volume '\(name)' has \(users) NBD client(s) connected")))
            }
            if importing.contains(volume.key) {
                return reply(.failure(.inUse("volume '\(name)' is being imported")))
            }
            volumes[name] = nil
            for reservation in volume.reservations {
                if reservation.kind == .pooled {
                    volume.pool.pooledReservedChunks -= reservation.remaining
                } else {
                    volume.pool.unwrittenReservedChunks -= reservation.remaining
                }
            }
            volume.reservations = []
            for (exportName, export) in extraExports where export.volume === volume { extraExports[exportName] = nil }
            // Chunks a snapshot or clone still maps stay theirs; the others are
            // zeroed and freed once the deletion is durable. A failed commit
            // keeps the deletion (retried; the error says it is not durable
            // yet), and until then the volume's chunks stay shared.
            let marks = beginLeaving(volume, marked: marked)
            layers[volume.layer]?.images -= 1
            commit(extra: marks + [.deleteVolume(key: volume.key)] + collectLayers(from: volume.layer),
                   onDurable: { [self] in depart(volume, marked: marked) }) { [self] result in
                guard case .success = result else { return reply(result) }
                // What its departure changed is committed next, and its chunks'
                // zeroing queued: answer after both, so the space shows as free.
                commit { [self] _ in submit(CommitJob(syncFDs: [], changes: []) { _ in }) { _ in reply(.success(())) } }
            }
        }
    }

    /// Changes a volume's size and/or labels, durably. Shrinking unmaps
    /// the chunks past the new end (and zeroes the cut-off tail of the last
    /// one), so growing again later reads zeros there.
    public func updateVolume(named name: String, _ patch: VolumePatch) throws(RemapError) -> VolumeInfo {
        if let size = patch.sizeBytes { try Volume.validate(sizeBytes: size) }
        if let labels = patch.labels { try Labels.validate(labels) }
        try call { [self] (reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            applyPatch(volume, patch) { reply($0) }
        }
        // Counted off the engine thread: the volume may share with many snapshots.
        return try volumeInfo(named: name)
    }

    private func applyPatch(_ volume: Volume, _ patch: VolumePatch, tailZeroed: Bool = false,
                            reply: @escaping (Result<Void, RemapError>) -> Void) {
        let name = volume.name
        if importing.contains(volume.key) { return reply(.failure(.inUse("volume '\(name)' is being imported"))) }
        var changes: [MetadataChange] = []
        if let size = patch.sizeBytes, size != volume.sizeBytes {
            if let refusal = changeRefusal(volume.pool) { return reply(.failure(refusal)) }
            if size < volume.sizeBytes {
                guard patch.allowShrink else {
                    return reply(.failure(.shrinkNotAllowed(
                        "volume '\(name)' is \(volume.sizeBytes) bytes; shrinking to \(size) discards data: pass allowShrink=true")))
                }
                if let users = exportUsers[volume.key], users > 0 {
                    return reply(.failure(.inUse("volume '\(name)' has \(users) NBD client(s) connected")))
                }
            }
            let chunkSize = volume.pool.chunkSize
            let oldSize = volume.sizeBytes
            let pool = volume.pool
            let oldChunks = (oldSize + chunkSize - 1) / chunkSize
            let newChunks = (size + chunkSize - 1) / chunkSize
            let tail = size / chunkSize
            if !tailZeroed, size < oldSize, size % chunkSize != 0, volume.map.lookup(tail) != nil,
               volume.unwrittenOwner(of: tail) == nil {
                // The cut-off part of the last chunk must read zeros if the
                // volume grows again: written with zeros first, through the
                // write path, so a chunk a snapshot shares is copied, not changed.
                let zeros = IOBuffer(count: Int(min((tail + 1) * chunkSize, oldSize) - size))
                memset(zeros.pointer, 0, zeros.count)
                return writeData(volume, offset: size, length: zeros.count, data: zeros.pointer, owner: zeros, bound: nil) { [self] result in
                    guard case .success = result else { return reply(result) }
                    applyPatch(volume, patch, tailZeroed: true, reply: reply)
                }
            }
            let thick = volume.reservations.first { $0.role == .thick && !$0.released }
            if thick != nil, newChunks > oldChunks {
                // A thick volume stays backed as it grows: decided at once.
                let needed = newChunks - oldChunks
                guard pool.unreservedFreeChunks >= needed else {
                    return reply(.failure(.noSpace(requestedBytes: needed * chunkSize, availableBytes: pool.freeBytes)))
                }
                guard pool.cleanChunksAvailable >= needed else {
                    if chunksComing(pool) {
                        return waitForChunks { [self] in applyPatch(volume, patch, tailZeroed: tailZeroed, reply: reply) }
                    }
                    return reply(.failure(.noSpace(requestedBytes: needed * chunkSize, availableBytes: pool.freeBytes)))
                }
            }
            // Range reservations past the new end end or are cut short.
            for reservation in volume.reservations where newChunks < oldChunks {
                guard let range = reservation.range, range.upperBound > newChunks else { continue }
                let before = reservation.remaining
                if range.lowerBound >= newChunks {
                    reservation.resizeRange(chunkCount: 0)
                    pool.unwrittenReservedChunks -= before
                    reservation.released = true
                    changes.append(.deleteReservation(id: reservation.id))
                } else {
                    reservation.resizeRange(chunkCount: newChunks - range.lowerBound)
                    pool.unwrittenReservedChunks -= before - reservation.remaining
                    changes.append(.resizeReservation(id: reservation.id, chunkCount: reservation.chunkCount))
                }
            }
            volume.reservations.removeAll { $0.released && $0.range != nil && $0.chunkCount == 0 }
            // A snapshot or clone keeps the chunks it shares; the volume lets
            // go of them, not durably yet.
            let dropped = newChunks < oldChunks ? sharedInPlace(volume, in: newChunks..<oldChunks) : []
            let resized = volume.resize(to: size)
            for (virtual, physical) in dropped { releaseShared(volume, virtual: virtual, physical: physical) }
            // Copy-on-write space follows what is left of the range reservations:
            // that of a range cut off ends, that of one cut short shrinks.
            if newChunks < oldChunks, volume.reservations.contains(where: { $0.role == .copyOnWrite }) {
                applyCopyOnWriteNeeds(volume, copyOnWriteNeeds(volume, assumingAllShared: false), growOnly: false)
            }
            if let thick, newChunks > oldChunks {
                thick.resizeRange(chunkCount: newChunks)
                changes.append(.resizeReservation(id: thick.id, chunkCount: newChunks))
                for chunk in oldChunks..<newChunks { changes += reserveCleanChunk(volume, chunk, for: thick) }
                prepareChunks(pool)
            }
            changes.append(.resizeVolume(key: volume.key, sizeBytes: size))
            if hasLayersBelow(volume) {
                // Tombstones hide what the layers below map past the end.
                changes += resized.unmapped.map { .tombstone(layer: volume.layer, virtualChunk: $0) }
            } else {
                changes += resized.unmapped.map { .unmap(volume: volume.layer, virtualChunk: $0) }
            }
            // Zeroed and freed once the change is durable.
            freeChunks(resized.freed.map(\.physicalChunk), of: pool)
        }
        if let labels = patch.labels, labels != volume.labels {
            volume.labels = labels
            changes.append(.setLabels(volume: volume.key, labels: labels))
        }
        guard !changes.isEmpty else { return reply(.success(())) }
        // A failed commit keeps the change in effect: it is retried, and the
        // error says it is not durable yet.
        commit(extra: changes) { [self] result in
            guard case .success = result, patch.sizeBytes != nil else { return reply(result) }
            // Answer after the zeroing of the cut chunks queued as the commit came back.
            submit(CommitJob(syncFDs: [], changes: []) { _ in }) { _ in reply(.success(())) }
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
}

/// Work for the engine thread from other threads, and the eventfd the ring
/// watches to wake for it.
final class Inbox: Sendable {
    let eventFD: Int32
    /// A piece of work and the name the engine's timings give it.
    typealias Item = (command: String, work: @Sendable () -> Void)
    private let queue = Mutex<[Item]>([])

    init(eventFD: Int32) { self.eventFD = eventFD }

    func deliver(_ work: @escaping @Sendable () -> Void, command: String = "supplier-io") {
        queue.withLock { $0.append((command, work)) }
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    /// Everything delivered so far, oldest first.
    func take() -> [Item] {
        queue.withLock { queue in
            let taken = queue
            queue.removeAll()
            return taken
        }
    }
}

/// Carries a non-Sendable value to the engine thread, where it is used.
struct UncheckedBox<T>: @unchecked Sendable {  // created and consumed on the engine thread only
    let value: T
    init(_ value: T) { self.value = value }
}

func monotonicNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

/// CPU time the calling thread has used (a system call, unlike the monotonic clock).
func threadCPUNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}

/// An RFC 4122 version 4 UUID.
func randomUUID() -> String {
    var generator = SystemRandomNumberGenerator()
    var bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
    bytes[6] = (bytes[6] & 0x0f) | 0x40
    bytes[8] = (bytes[8] & 0x3f) | 0x80
    let hex = bytes.map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    let parts = [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { range in
        String(hex[hex.index(hex.startIndex, offsetBy: range.lowerBound)..<hex.index(hex.startIndex, offsetBy: range.upperBound)])
    }
    return parts.joined(separator: "-")
}

/// Now as `2026-11-25T18:00:00Z`.
func utcTimestamp() -> String {
    var now = time(nil)
    var parts = tm()
    gmtime_r(&now, &parts)
    var buffer = [CChar](repeating: 0, count: 32)
    let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
    return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
