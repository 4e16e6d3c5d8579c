import Glibc
import RemapCore
import RemapLog
import RemapStore

/// Who waits for a metadata commit, and for which pools' data.
struct CommitWaiter {
    /// A FLUSH covers its volume's pool: it succeeds only if that pool's
    /// suppliers were synced without error (and it is online). Control-plane
    /// changes cover no pool: the commit alone decides.
    var pools: Set<String>
    var completion: (Result<Void, RemapError>) -> Void
}

/// Metadata commits on the engine thread: one in flight at a time, the
/// rest batched behind it (group commit). A commit that fails keeps its
/// changes: they go back to the front of `pending`, its waiters get the
/// error, and the next commit (a FLUSH, a control-plane change, or the
/// retry from `tick`) carries them again. So a FLUSH is answered OK only
/// once a commit holding every mapping made before it has succeeded.
extension Engine {
    /// How long after a failed commit `tick` tries again.
    static let commitRetryInterval: Int64 = 1_000_000_000
    /// The periodic commit's failures, retried every second while commits
    /// fail: one line a minute, not 3,600 an hour.
    static let periodicCommitFailures = LogThrottle()

    /// FLUSH of `volume`: syncs its pool's suppliers, then commits every
    /// pending change; `completion` runs on the engine thread once both are
    /// durable. A pool that is not online fails it at once: its write-back
    /// already lost data.
    func flush(_ volume: Volume, _ completion: @escaping (Result<Void, RemapError>) -> Void) {
        assertEngineThread()
        if let refusal = ioRefusal(volume.pool) { return completion(.failure(refusal)) }
        commit(syncing: [volume.pool.name], completion)
    }

    /// Commits `extra` after everything pending. `syncing` names the pools
    /// whose data the caller needs durable (a FLUSH's); pools holding
    /// pending copy-on-write mappings are synced too, since those mappings
    /// replace mappings to durable data. Other new mappings point at
    /// prepared chunks, which are clean, so committing them before their
    /// data is synced shows, after a crash, zeros or this volume's own
    /// unflushed writes — what a disk with a write cache may show — never
    /// anyone's old data. `onDurable` runs once the changes are durable,
    /// before `completion`, also when that takes a retry.
    func commit(extra: [MetadataChange] = [], syncing pools: Set<String> = [], onDurable: (() -> Void)? = nil,
                _ completion: @escaping (Result<Void, RemapError>) -> Void) {
        assertEngineThread()
        pending += extra
        if let onDurable { durableActions.append(onDurable) }
        commitWaiters.append(CommitWaiter(pools: pools, completion: completion))
        startCommit()
    }

    /// Starts the next batch unless one is in flight (its completion starts
    /// the next).
    func startCommit() {
        guard !commitInFlight, !commitWaiters.isEmpty else { return }
        let changes = pending
        pending = []
        let actions = durableActions
        durableActions = []
        let waiters = commitWaiters
        commitWaiters = []
        let copies = copyPools
        copyPools = []
        let freed = unmapped
        unmapped = []
        lastCommit = monotonicNanoseconds()
        let tag = epoch
        epoch += 1
        let synced = copies.union(waiters.flatMap(\.pools)).filter { pools[$0]?.state != .offline }
        commitInFlight = true
        // Freed chunks are in neither `unmapped` nor `draining` until the
        // commit is back: count it as reclaim in flight (the pool check waits).
        if !freed.isEmpty { reclaimJobs += 1 }
        let fds = synced.flatMap { supplierFDs[$0] ?? [] }
        submitJob(CommitJob(syncFDs: fds, changes: changes) { _ in }) { [self] outcome in
            commitInFlight = false
            if !freed.isEmpty { reclaimJobs -= 1 }
            noteFailedSyncs(outcome.failedSyncs, during: "write-back (fdatasync)")
            switch outcome.committed {
            case .success:
                if let failure = commitFailure {
                    log.notice("metadata commits succeed again (they failed with: \(failure))")
                    commitFailure = nil
                }
                // Metadata takes commits again: chunk preparation need not wait.
                for pool in preparationFailures.keys { preparationFailures[pool]?.retryAt = 0 }
                if !freed.isEmpty {
                    for group in Dictionary(grouping: freed, by: { $0.pool.name }).values {
                        draining.append((tag, group[0].pool, group.map(\.chunk)))
                    }
                    reclaimDrained()
                }
                for action in actions { action() }
                for waiter in waiters {
                    let failed = waiter.pools.compactMap { pools[$0] }.first { $0.state != .online }
                    waiter.completion(failed.map { .failure(ioRefusal($0) ?? .internal("pool '\($0.name)' failed")) } ?? .success(()))
                }
            case .failure(let error):
                // Nothing of the batch is durable: it goes first again.
                pending = changes + pending
                durableActions = actions + durableActions
                copyPools.formUnion(copies)
                unmapped = freed + unmapped
                commitFailures += 1
                if commitFailure == nil {
                    log.error("metadata commit failed: \(error); its changes stay pending and are retried, FLUSH fails until a commit succeeds")
                }
                commitFailure = error
                let answer = RemapError.io(
                    errno: error.errno ?? EIO,
                    context: "committing metadata failed (\(error)); the change is kept and retried, but it is not durable yet")
                for waiter in waiters { waiter.completion(.failure(answer)) }
            }
            startCommit()
        }
    }

    /// The periodic commit (from `tick`): every few seconds, or every
    /// second while commits fail.
    func commitIfDue(now: Int64) {
        guard !commitInFlight, !pending.isEmpty || !unmapped.isEmpty || !durableActions.isEmpty else { return }
        let interval = commitFailure == nil ? Self.commitInterval : Self.commitRetryInterval
        guard now - lastCommit > interval else { return }
        commit { result in
            if case .failure(let error) = result {
                Self.periodicCommitFailures.log(.error, "periodic", "periodic metadata commit failed: \(error)")
            }
        }
    }

    /// Hands `job` to the committer; `completion` comes back on the engine
    /// thread with everything that happened.
    func submitJob(_ job: CommitJob, _ completion: @escaping (CommitOutcome) -> Void) {
        assertEngineThread()
        var job = job
        let done = UncheckedBox(completion)
        // Its completion counts as part of the command that asked for it.
        let command = runningCommand ?? "commit"
        job.completion = { [self] outcome in post(command) { done.value(outcome) } }
        committer.submit(job)
    }

    /// Hands `job` to the committer for a plain answer: its first failure,
    /// a failed sync included (that supplier's pool degrades).
    func submit(_ job: CommitJob, _ completion: @escaping (Result<Void, RemapError>) -> Void) {
        submitJob(job) { [self] outcome in
            noteFailedSyncs(outcome.failedSyncs, during: "write-back (fdatasync)")
            completion(outcome.result)
        }
    }
}

extension RemapError {
    /// The errno behind an I/O error, if it is one.
    var errno: Int32? {
        if case .io(let errno, _) = self { return errno }
        return nil
    }
}
