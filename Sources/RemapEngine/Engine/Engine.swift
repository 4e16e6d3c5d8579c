import CURing
import Dispatch
import Glibc
import RemapCore
import RemapLog
import RemapStore

/// The data-path engine: one io_uring ring and the thread that drives it.
///
/// The engine thread owns the live state (pools, volumes, chunk maps,
/// allocators, pending metadata). Other threads never touch it: they `post`
/// work to the engine (woken through an eventfd the ring watches) and wait
/// for the answer. A control-plane command therefore runs between two data
/// requests, which gives every point-in-time operation one clear order.
///
/// The type is split by concern, one extension per file: the run loop and
/// command queue (Engine+RunLoop), loading (Engine+Load), metadata commits
/// (Engine+Commit), pools (Engine+Pools), volumes (Engine+Volumes),
/// snapshots and clones (Engine+Snapshots), space and reservations
/// (Engine+Space), exports (Engine+Exports), supplier health (Engine+Health),
/// the chunk life cycle (Engine+Reclaim), imports and content streams
/// (Engine+Import); the data path behind the I/O surface lives in IO/
/// (Engine+Write, Engine+Read, Engine+Zero). Its state is below, grouped the
/// same way; all of it belongs to the engine thread (`owner`).
public final class Engine: @unchecked Sendable {  // mutable state is only touched on the engine thread
    /// Which I/O engine runs, reported by `GET /v1/version`.
    public var name: String { ring.name }
    /// New file suppliers must lie under this directory.
    public let supplierDirectory: String
    /// The bounds in force; set before start(), read-only after.
    public var limits = Limits()
    /// Faults injected into supplier I/O and commits (`--fault-injection`).
    public let faults: FaultInjector
    /// What happened, for `GET /v1/events`.
    public let events = EventLog()
    /// Long-running operations (imports), newest last.
    public let operations = OperationLog()

    // MARK: Run loop (Engine+RunLoop.swift)

    /// The thread that owns the state below: the caller of `init` until
    /// `start()`, the engine thread from then on.
    let owner = ThreadOwner()
    let ring: any IOQueue
    let inbox: Inbox
    let wakeBuffer = IOBuffer(count: 8)
    let stopped = DispatchSemaphore(value: 0)
    /// The command the engine thread is running (see `timed`); nil while it serves I/O.
    var runningCommand: String?
    var statistics = DataPathStatistics()
    var stopping = false
    var heartbeat: (interval: Int64, ping: @Sendable () -> Void, last: Int64)?
    var lastSpaceCheck: Int64 = 0
    var finalCommitSubmitted = false
    var finished = false

    // MARK: Pools and suppliers (Engine+Pools.swift, Engine+Health.swift)

    var pools: [String: Pool] = [:]
    /// Open supplier files by pool name, in supplier order; none for an
    /// offline pool.
    var supplierFDs: [String: [Int32]] = [:]
    /// Every supplier I/O goes through it (the fault seam).
    let suppliers: SupplierIO
    /// Pools being created (their suppliers are being made off this thread).
    var poolsInCreation: Set<String> = []
    #if DEBUG
    /// A test's code, run by `growSupplier` on its caller's thread between
    /// looking the supplier up and growing it: where a pool deletion may
    /// race in. Set and used by that thread only.
    var whileGrowingSupplier: (@Sendable () -> Void)?
    #endif

    // MARK: Volumes and snapshots (Engine+Volumes.swift, Engine+Snapshots.swift)

    var volumes: [String: Volume] = [:]
    var nextVolumeKey: Int64 = 1
    /// Volumes whose creation is not yet durable.
    var undurable: Set<Int64> = []
    /// Snapshots by id.
    var snapshots: [String: Volume] = [:]
    /// Deleted volumes and snapshots whose deletion is not durable yet: gone
    /// from the API and NBD, still in their families (see `beginLeaving`).
    var leaving: [Volume] = []
    /// The mapping layers (see RemapCore's Snapshot.swift), by key.
    var layers: [Int64: MappingLayer] = [:]
    /// Reference counts of families, by the fingerprint they were counted at.
    var usageCache: [ObjectIdentifier: (fingerprint: [UInt64], counts: [UInt8])] = [:]
    /// Writes (and TRIM/WRITE_ZEROES) in flight per volume key.
    var volumeWrites: [Int64: Int] = [:]
    /// Volumes a snapshot is waiting on: writes arriving meanwhile, held.
    var frozenVolumes: [Int64: [() -> Void]] = [:]
    /// What runs once a volume's writes in flight are done.
    var quiesceWaiters: [Int64: [() -> Void]] = [:]

    // MARK: Metadata commits (Engine+Commit.swift)

    let store: MetadataStore
    let committer: Committer
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
    var lastCommit = monotonicNanoseconds()
    static let commitInterval: Int64 = 5_000_000_000
    /// Keeps room for metadata commits; set before `start()`.
    public var metadataReserve: MetadataReserve?
    /// The metadata filesystem is nearly full: new chunks are refused so a
    /// commit never fails for space (see `MetadataReserve`).
    public var metadataShort: Bool { metadataReserve?.short ?? false }

    // MARK: Data path (IO/Engine+Write.swift, Engine+Read.swift, Engine+Zero.swift)

    /// Chunks mapped by a write that has not completed yet; they join
    /// `pending` when a write into them succeeds, and are given back when
    /// every write into them failed (`writers` counts those in flight).
    var unsettled: [ChunkKey: UnsettledChunk] = [:]
    /// Chunks being copied on write: reads and writes of them wait.
    var copying: [ChunkKey: [() -> Void]] = [:]
    /// Data I/O in flight, by the epoch it started in. A chunk unmapped in
    /// epoch E is zeroed and reused only when no I/O of an epoch <= E is left,
    /// so no late read or write can touch it in its next life.
    var epoch: UInt64 = 0
    var ioInFlight: [UInt64: Int] = [:]

    // MARK: Chunk life cycle (Engine+Reclaim.swift)

    /// Chunks unmapped by TRIM/WRITE_ZEROES since the last commit.
    var unmapped: [(pool: Pool, chunk: UInt64)] = []
    /// Committed as unmapped, waiting for older I/O to finish before zeroing.
    var draining: [(epoch: UInt64, pool: Pool, chunks: [UInt64])] = []
    /// Zeroing jobs of reclaimed chunks, and commits freeing chunks, in flight.
    var reclaimJobs = 0
    /// Freed chunks whose zeroing failed (or whose pool cannot do I/O): they
    /// stay allocated and dirty, and are tried again from `tick`.
    var reclaimRetries: [(pool: Pool, chunks: [UInt64], due: Int64)] = []
    /// Chunks a failed write drew from a reservation: once zeroed and free
    /// again they go back to it (not before: a pooled reservation is always
    /// backed by free chunks).
    var reclaimHeirs: [ReclaimKey: Reservation] = [:]
    /// Writes waiting for prepared chunks.
    var waitingForChunks: [() -> Void] = []
    /// Pools with a chunk preparation commit in flight.
    var preparingPools: Set<String> = []
    /// Pools whose last chunk preparation failed (its commit did): the
    /// error, and when to try again. Until then writes that need a new
    /// chunk fail with that error instead of waiting (see `noChunk`).
    var preparationFailures: [String: (error: RemapError, retryAt: Int64)] = [:]
    /// Pool checks waiting for reclaim in flight to settle.
    var settleWaiters: [SettleWaiter] = []
    static let stashTarget = 1024
    static let stashLowWater = 512

    // MARK: Space (Engine+Space.swift)

    /// Thresholds each pool is above (a crossing fires once).
    var crossedThresholds: [String: Set<Int>] = [:]
    /// Writes waiting for space under onNoSpace queueSeconds.
    var spaceWaiters: [(deadline: Int64, pool: Pool, retry: () -> Void, fail: () -> Void)] = []
    /// When the last pool.no-space event was logged, per pool (they are rate-limited).
    var lastNoSpaceEvent: [String: Int64] = [:]

    // MARK: Front ends (Engine+Exports.swift, Engine+Import.swift, NBD/)

    /// The NBD server, a front end: it sees the engine only as an
    /// `ExportDirectory` and through `VolumeIO`.
    private(set) lazy var nbd = NBDServer(ring: ring, exports: self)
    /// Front-end users (NBD connections) per volume key.
    var exportUsers: [Int64: Int] = [:]
    /// Extra NBD exports: name → the volume and the reservation writes draw on.
    var extraExports: [String: (volume: Volume, reservation: String?)] = [:]
    /// Connections per extra export name, so an export in use is not deleted.
    var extraExportUsers: [String: Int] = [:]
    /// Volumes an import is filling: no export, no delete, no patch.
    var importing: Set<Int64> = []
    /// Content streams and other readers of a snapshot outside NBD.
    var snapshotReaders: [Int64: Int] = [:]

    struct ChunkKey: Hashable {
        var volume: Int64
        var chunk: UInt64
    }

    struct ReclaimKey: Hashable {
        var pool: String
        var chunk: UInt64
    }

    /// The I/O engine to run.
    public enum Kind: String, Sendable, CaseIterable {
        /// io_uring, else (disabled by sysctl, seccomp, an old kernel) threads.
        case auto
        case ioUring = "io_uring"
        case threads
    }

    /// Opens the engine on `store` and loads its state (`load`); the engine
    /// thread runs from `start()`.
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

    /// Traps in debug builds unless called on the engine thread (or before
    /// `start()`): for every method that touches the engine's state.
    @inline(__always)
    func assertEngineThread(_ function: StaticString = #function) {
        owner.assertOwner(function)
    }
}
