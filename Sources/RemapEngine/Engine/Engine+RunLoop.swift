import CURing
import Dispatch
import Glibc
import RemapCore
import RemapLog
import Synchronization

/// The engine thread's life: its loop (I/O completions, then `tick`), the
/// command queue other threads post to, and `call`, which waits for an answer.
extension Engine {
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
            owner.claim()
            ring.activate()
            while !finished {
                var wait = heartbeat.map { min($0.interval, 1_000_000_000) } ?? 1_000_000_000
                if let resume = nbd.untilNextResume(now: monotonicNanoseconds()) { wait = min(wait, resume) }
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
            nbd.limits = limits
            nbd.serve(listener: fd, tls: tls)
        }
    }

    /// Stops accepting, lets every connection finish what is in flight,
    /// commits all pending metadata and ends the engine thread. Blocks.
    public func stop() {
        post { [self] in
            stopping = true
            nbd.stop()
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

    /// Runs `work` on the engine thread and waits for the answer it gives,
    /// possibly later (after a commit). For other threads only: on the
    /// engine thread it traps (debug builds) instead of waiting for itself.
    /// `command` names it in the engine's timings: the caller's name by default.
    func call<T: Sendable>(_ command: String = #function,
                           _ work: @escaping @Sendable (_ reply: @escaping @Sendable (Result<T, RemapError>) -> Void) -> Void) throws(RemapError) -> T {
        // The engine thread would wait for itself for ever.
        owner.assertNotOwner("\(command): call() from the engine thread")
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

    /// After every batch of completions, and at least once a second: what
    /// runs on time rather than on an event.
    private func tick() {
        assertEngineThread()
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
        nbd.tick(now: now)
        wakeSettleWaiters(now: now)
        if let beat = heartbeat {
            let now = monotonicNanoseconds()
            if now - beat.last >= beat.interval {
                beat.ping()
                heartbeat?.last = now
            }
        }
        if stopping && nbd.connectionCount == 0 && !finalCommitSubmitted {
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

    /// What the data path and the engine thread did since start, for /metrics.
    public func dataPathStatistics() -> DataPathStatistics {
        (try? call { [self] reply in
            var copy = statistics
            copy.commands = nbd.commands
            copy.connections = nbd.connectionCount
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
