import Dispatch
import Glibc
import RemapCore
import RemapStore
import Synchronization

/// A range of a supplier to zero after the commit that freed it.
struct ZeroRange: Sendable {
    var fd: Int32
    var offset: UInt64
    var length: UInt64
    /// Give the blocks back to the host (sparse file) or keep them
    /// (preallocated file, block device).
    var punch: Bool
}

/// Freed chunks of one pool to zero: the engine hands over the list and the
/// pool's layout as they are (nothing per chunk on its thread); the
/// committer sorts them and turns them into supplier ranges.
struct ChunkZeroing: Sendable {
    /// A segment of the pool (see `Pool.Segment`) with its supplier's descriptor.
    struct Piece: Sendable {
        var firstChunk: UInt64
        var chunks: UInt64
        var fd: Int32
        var supplierOffset: UInt64
        /// Give the blocks back to the host (sparse file) or keep them.
        var punch: Bool
    }

    var pool: String
    var chunkSize: UInt64
    /// In chunk order.
    var pieces: [Piece]
    var chunks: [UInt64]

    /// The supplier ranges to zero (neighbours merged) and the chunks as sorted runs.
    func plan() -> (ranges: [ZeroRange], runs: [Range<UInt64>]) {
        var runs: [Range<UInt64>] = []
        for chunk in chunks.sorted() {
            if let last = runs.last, last.upperBound == chunk {
                runs[runs.count - 1] = last.lowerBound..<(chunk + 1)
            } else {
                runs.append(chunk..<(chunk + 1))
            }
        }
        var ranges: [ZeroRange] = []
        for run in runs {
            var chunk = run.lowerBound
            while chunk < run.upperBound {
                // invariant: every freed chunk lies in the pool, so in a piece
                let piece = pieces.last { $0.firstChunk <= chunk }!
                let end = min(run.upperBound, piece.firstChunk + piece.chunks)
                let offset = piece.supplierOffset + (chunk - piece.firstChunk) * chunkSize
                let length = (end - chunk) * chunkSize
                if var last = ranges.last, last.fd == piece.fd, last.offset + last.length == offset {
                    last.length += length
                    ranges[ranges.count - 1] = last
                } else {
                    ranges.append(ZeroRange(fd: piece.fd, offset: offset, length: length, punch: piece.punch))
                }
                chunk = end
            }
        }
        return (ranges, runs)
    }
}

/// One metadata transaction and what must happen around it.
struct CommitJob: Sendable {
    /// Synced (fdatasync) before the transaction: data first, then the
    /// metadata that points at it. A sync that fails is reported in the
    /// outcome (the supplier's pool degrades); the transaction still runs.
    var syncFDs: [Int32]
    var changes: [MetadataChange]
    /// Freed chunks zeroed after the transaction, then synced; then their
    /// dirty marks are cleared (they are clean again).
    var zeroing: ChunkZeroing?
    /// Runs on the committer thread when the job is done.
    var completion: @Sendable (CommitOutcome) -> Void
}

/// What became of a `CommitJob`.
struct CommitOutcome: Sendable {
    /// Supplier descriptors whose fdatasync failed, with the errno: data the
    /// kernel had accepted for them is lost, and it says so only once.
    var failedSyncs: [Int32: Int32] = [:]
    /// The transaction of `changes`.
    var committed: Result<Void, RemapError> = .success(())
    /// The zeroing and the clearing of the dirty marks; nil when the job
    /// zeroes nothing.
    var zeroed: Result<Void, RemapError>?
    /// The zeroed chunks as sorted runs, for the allocator to take back a
    /// word at a time.
    var zeroedRuns: [Range<UInt64>] = []

    /// The first failure of the job's parts, failed syncs included.
    var result: Result<Void, RemapError> {
        if case .failure = committed { return committed }
        if case .failure(let error)? = zeroed { return .failure(error) }
        if let (_, error) = failedSyncs.first {
            return .failure(.io(errno: error, context: "syncing a supplier: \(String(cString: strerror(error)))"))
        }
        return .success(())
    }
}

/// The thread that makes metadata durable, so the engine's ring never waits
/// on fsync. Jobs run one at a time, in the order they were submitted.
final class Committer: Sendable {
    private let store: MetadataStore
    private let faults: FaultInjector
    private let queue = Mutex<[CommitJob]>([])
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = Mutex(false)

    init(store: MetadataStore, faults: FaultInjector) {
        self.store = store
        self.faults = faults
    }

    func start() {
        startThread(name: "remap-commit") { [self] in run() }
    }

    func submit(_ job: CommitJob) {
        queue.withLock { $0.append(job) }
        wake.signal()
    }

    /// Finishes the jobs already submitted, then ends the thread.
    func stop() {
        let done = DispatchSemaphore(value: 0)
        submit(CommitJob(syncFDs: [], changes: []) { _ in done.signal() })
        done.wait()
        stopped.withLock { $0 = true }
        wake.signal()
    }

    private func run() {
        while true {
            wake.wait()
            if stopped.withLock({ $0 }) { return }
            while let job = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
                job.completion(Self.perform(job, store: store, faults: faults))
            }
        }
    }

    /// The work of a job, on the calling thread: sync, commit, zero, sync,
    /// commit. The committer runs it; start-up runs it before the engine does.
    static func perform(_ job: CommitJob, store: MetadataStore, faults: FaultInjector) -> CommitOutcome {
        var outcome = CommitOutcome()
        for fd in Set(job.syncFDs) {
            let error = SupplierIO.sync(fd, faults: faults)
            if error != 0 { outcome.failedSyncs[fd] = error }
        }
        do throws(RemapError) {
            try transaction(job.changes, store: store, faults: faults)
        } catch {
            outcome.committed = .failure(error)
            return outcome
        }
        guard let zeroing = job.zeroing, !zeroing.chunks.isEmpty else { return outcome }
        do throws(RemapError) {
            let (ranges, runs) = zeroing.plan()
            for range in ranges { try SupplierIO.zero(range, faults: faults) }
            for fd in Set(ranges.map(\.fd)) {
                let error = SupplierIO.sync(fd, faults: faults)
                guard error == 0 else {
                    outcome.failedSyncs[fd] = error
                    throw .io(errno: error, context: "syncing zeroed chunks: \(String(cString: strerror(error)))")
                }
            }
            try transaction([.clearDirtyChunks(pool: zeroing.pool, physicalChunks: zeroing.chunks)], store: store, faults: faults)
            outcome.zeroedRuns = runs
            outcome.zeroed = .success(())
        } catch {
            outcome.zeroed = .failure(error)
        }
        return outcome
    }

    /// One metadata transaction, through the fault seam.
    private static func transaction(_ changes: [MetadataChange], store: MetadataStore, faults: FaultInjector) throws(RemapError) {
        guard !changes.isEmpty else { return }
        let injected = faults.blockingFault(.metadataCommit)
        if injected != 0 {
            throw .io(errno: injected, context: "committing metadata: \(String(cString: strerror(injected))) (injected)")
        }
        try store.apply(changes)
    }
}
