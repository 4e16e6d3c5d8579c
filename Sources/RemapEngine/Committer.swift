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
    /// metadata that points at it.
    var syncFDs: [Int32]
    var changes: [MetadataChange]
    /// Zeroed after the transaction, then synced; then `afterZeroing` is
    /// committed (the chunks are clean again).
    var zeroRanges: [ZeroRange] = []
    var afterZeroing: [MetadataChange] = []
    /// Runs on the committer thread when the job is durable or failed.
    var completion: @Sendable (Result<Void, RemapError>) -> Void
}

/// The thread that makes metadata durable, so the engine's ring never waits
/// on fsync. Jobs run one at a time, in the order they were submitted.
final class Committer: Sendable {
    private let store: MetadataStore
    private let queue = Mutex<[CommitJob]>([])
    private let wake = DispatchSemaphore(value: 0)
    private let stopped = Mutex(false)

    init(store: MetadataStore) {
        self.store = store
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
                job.completion(Result { () throws(RemapError) in try execute(job) })
            }
        }
    }

    private func execute(_ job: CommitJob) throws(RemapError) {
        try Self.perform(job, store: store)
    }

    /// The work of a job, on the calling thread: sync, commit, zero, sync,
    /// commit. The committer runs it; start-up runs it before the engine does.
    static func perform(_ job: CommitJob, store: MetadataStore) throws(RemapError) {
        for fd in Set(job.syncFDs) { try systemCall("fdatasync supplier") { fdatasync(fd) } }
        try store.apply(job.changes)
        guard !job.zeroRanges.isEmpty else { return }
        for range in job.zeroRanges { try zero(range) }
        for fd in Set(job.zeroRanges.map(\.fd)) { try systemCall("fdatasync supplier") { fdatasync(fd) } }
        try store.apply(job.afterZeroing)
    }

    /// Makes a range of a supplier read zeros.
    static func zero(_ range: ZeroRange) throws(RemapError) {
        let mode = range.punch ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
        if fallocate(range.fd, mode, off_t(range.offset), off_t(range.length)) == 0 { return }
        let error = errno
        guard error == EOPNOTSUPP || error == EINVAL else {
            throw .io(errno: error, context: "zeroing freed chunks: \(String(cString: strerror(error)))")
        }
        // The filesystem cannot zero a range: write zeros.
        let block = 1 << 20
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 4096)
        defer { zeros.deallocate() }
        memset(zeros, 0, block)
        var done: UInt64 = 0
        while done < range.length {
            let count = Int(min(UInt64(block), range.length - done))
            let written = try systemCall("writing zeros to freed chunks") {
                pwrite(range.fd, zeros, count, off_t(range.offset + done))
            }
            done += UInt64(written)
        }
    }
}
