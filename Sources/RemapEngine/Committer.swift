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

/// One metadata transaction and what must happen around it.
struct CommitJob: Sendable {
    /// Synced (fdatasync) before the transaction: data first, then the
    /// metadata that points at it. A sync that fails is reported in the
    /// outcome (the supplier's pool degrades); the transaction still runs.
    var syncFDs: [Int32]
    var changes: [MetadataChange]
    /// Zeroed after the transaction, then synced; then `afterZeroing` is
    /// committed (the chunks are clean again).
    var zeroRanges: [ZeroRange] = []
    var afterZeroing: [MetadataChange] = []
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
    /// The zeroing and `afterZeroing`; nil when the job zeroes nothing.
    var zeroed: Result<Void, RemapError>?

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
        guard !job.zeroRanges.isEmpty else { return outcome }
        do throws(RemapError) {
            for range in job.zeroRanges { try SupplierIO.zero(range, faults: faults) }
            for fd in Set(job.zeroRanges.map(\.fd)) {
                let error = SupplierIO.sync(fd, faults: faults)
                guard error == 0 else {
                    outcome.failedSyncs[fd] = error
                    throw .io(errno: error, context: "syncing zeroed chunks: \(String(cString: strerror(error)))")
                }
            }
            try transaction(job.afterZeroing, store: store, faults: faults)
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
