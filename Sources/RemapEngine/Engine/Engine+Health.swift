import Glibc
import RemapCore
import RemapLog
import RemapStore

/// Supplier failures and pool states on the engine thread (DESIGN.md, "When
/// the hardware fails"). Linux reports a write-back error once per file:
/// whoever sees it records it here, so it is never lost. A pool whose
/// supplier failed is degraded — reads work; writes, TRIM, WRITE_ZEROES and
/// FLUSH fail with EIO — until an operator clears it; one whose supplier was
/// missing at start is offline. Every other pool serves as before.
extension Engine {
    // MARK: - Opening

    /// Opens every supplier of `pool` (at start). A missing, short or
    /// unopenable one leaves the pool offline, with the reason; the daemon
    /// goes on with the other pools.
    func openSuppliers(of pool: Pool) {
        var fds: [Int32] = []
        for (index, supplier) in pool.suppliers.enumerated() {
            do throws(RemapError) {
                fds.append(try SupplierFile.open(supplier))
            } catch {
                for fd in fds { close(fd) }
                pool.recordFault(SupplierFault(kind: .missing, message: "supplier \(supplier.path): \(error)"), supplier: index)
                log.error("pool '\(pool.name)' is offline: supplier \(supplier.path): \(error)")
                events.record(.poolOffline, pool: pool.name,
                              detail: "pool '\(pool.name)' is offline: supplier \(supplier.path): \(error)")
                return
            }
        }
        install(fds, for: pool)
    }

    func install(_ fds: [Int32], for pool: Pool) {
        assertEngineThread()
        supplierFDs[pool.name] = fds
        for fd in fds { faults.register(fd: fd, pool: pool.name) }
    }

    /// The open descriptor of supplier `index` of `pool`. It stays on the
    /// engine thread: a pool deletion may close it at any time.
    func supplierFD(pool: Pool, index: Int) -> Int32 {
        assertEngineThread()
        return supplierFDs[pool.name]![index]  // invariant: every pool but an offline one has its fds; I/O on those is refused first
    }

    /// A descriptor of supplier `index` of `pool` for another thread (a
    /// growth, a recheck): a duplicate the caller closes. A pool deletion
    /// closes the engine's own at any time; the duplicate stays this
    /// supplier's, so its number never comes to mean another file meanwhile.
    func lendSupplierFD(pool: Pool, index: Int) throws(RemapError) -> Int32 {
        let fd = supplierFD(pool: pool, index: index)
        let lent = try systemCall("duplicating the descriptor of supplier \(pool.suppliers[index].path)") {
            fcntl(fd, F_DUPFD_CLOEXEC, 0)
        }
        // Faults injected into the pool's suppliers reach it too.
        faults.register(fd: lent, pool: pool.name)
        return lent
    }

    // MARK: - Failures

    /// The error I/O gets from a pool that is not online, or nil.
    func ioRefusal(_ pool: Pool) -> RemapError? {
        switch pool.state {
        case .online:
            return nil
        case .degraded:
            return .io(errno: EIO, context: "pool '\(pool.name)' is degraded (\(pool.stateReason ?? "a supplier failed")); "
                + "writes and flushes fail until an operator clears it (POST /v1/pools/\(pool.name)/clear-errors)")
        case .offline:
            return .io(errno: EIO, context: "pool '\(pool.name)' is offline (\(pool.stateReason ?? "a supplier is missing"))")
        }
    }

    /// The refusal for a control-plane change that needs the pool's storage.
    func changeRefusal(_ pool: Pool) -> RemapError? {
        guard pool.state != .online else { return nil }
        return .poolUnavailable("pool '\(pool.name)' is \(pool.state.rawValue) (\(pool.stateReason ?? "a supplier failed")); "
            + "clear its errors first (POST /v1/pools/\(pool.name)/clear-errors)")
    }

    /// The pool and supplier index behind supplier descriptor `fd`.
    func supplier(of fd: Int32) -> (pool: Pool, index: Int)? {
        for (name, fds) in supplierFDs {
            if let index = fds.firstIndex(of: fd), let pool = pools[name] { return (pool, index) }
        }
        return nil
    }

    /// Supplier `fd` failed `what` with `error`: its pool degrades.
    func supplierFailed(fd: Int32, errno error: Int32, during what: String) {
        assertEngineThread()
        guard let (pool, index) = supplier(of: fd) else { return }
        let path = pool.suppliers[index].path
        supplierFailed(pool, index, SupplierFault(kind: .failed, message: "\(what) of supplier \(path) failed: \(String(cString: strerror(error)))"))
    }

    func supplierFailed(_ pool: Pool, _ index: Int, _ fault: SupplierFault) {
        guard pool.recordFault(fault, supplier: index) else { return }
        events.record(.poolDegraded, pool: pool.name,
                      detail: "pool '\(pool.name)' is degraded: \(fault.message); reads work, writes and flushes fail until it is cleared")
    }

    /// Records every failed fdatasync of a commit job.
    func noteFailedSyncs(_ failed: [Int32: Int32], during what: String) {
        for (fd, error) in failed { supplierFailed(fd: fd, errno: error, during: what) }
    }

    /// A supplier file deleted or truncated under the running daemon, or a
    /// block device that shrank: writes would go to an unlinked inode or
    /// past the end, and data would be gone at the next start.
    func checkSuppliers() {
        for pool in pools.values where pool.state != .offline {
            for (index, fd) in (supplierFDs[pool.name] ?? []).enumerated() where pool.supplierFaults[index] == nil {
                let supplier = pool.suppliers[index]
                var status = stat()
                guard fstat(fd, &status) == 0 else { continue }
                var problem: String?
                if supplier.kind == .file && status.st_nlink == 0 {
                    problem = "supplier file \(supplier.path) was deleted under remapd"
                } else if let size = try? SupplierFile.size(fd: fd, path: supplier.path), size < supplier.sizeBytes {
                    problem = "supplier \(supplier.path) shrank to \(size) bytes (remap uses \(supplier.sizeBytes))"
                }
                if let problem {
                    log.error("pool '\(pool.name)': \(problem)")
                    supplierFailed(pool, index, SupplierFault(kind: .failed, message: problem))
                }
            }
        }
    }

    // MARK: - Clearing (control plane)

    /// Checks every supplier of the pool again — it is there, the same file,
    /// big enough, and fdatasync succeeds (an offline pool's are opened) —
    /// and if all pass, the pool is online again. Blocking checks run on
    /// the caller's thread.
    public func clearPoolErrors(named name: String) throws(RemapError) -> PoolInfo {
        let (suppliers, fds, state, recorded): ([Supplier], [Int32], PoolState, UInt64) = try call { [self] reply in
            guard let pool = pools[name] else { return reply(.failure(.notFound(kind: "pool", name: name))) }
            // A degraded pool's suppliers are rechecked on the caller's thread, through duplicates.
            var lent: [Int32] = []
            do throws(RemapError) {
                if pool.state == .degraded {
                    for index in pool.suppliers.indices { lent.append(try lendSupplierFD(pool: pool, index: index)) }
                }
            } catch {
                for fd in lent { close(fd) }
                return reply(.failure(error))
            }
            reply(.success((pool.suppliers, lent, pool.state, pool.faultsRecorded)))
        }
        defer { for fd in fds { close(fd) } }
        if state == .online { return try poolInfo(named: name) }
        var opened: [Int32] = []
        do throws(RemapError) {
            if state == .offline {
                for supplier in suppliers { opened.append(try SupplierFile.open(supplier)) }
                for fd in opened {
                    let error = SupplierIO.sync(fd, faults: faults)
                    if error != 0 { throw .io(errno: error, context: "fdatasync: \(String(cString: strerror(error)))") }
                }
            } else {
                for (supplier, fd) in zip(suppliers, fds) { try Self.recheck(supplier, fd: fd, faults: faults) }
            }
        } catch {
            for fd in opened { close(fd) }
            throw .supplierFailed("pool '\(name)' keeps its errors: \(error)")
        }
        let installed = UncheckedBox(opened)
        return try call { [self] reply in
            guard let pool = pools[name] else { return reply(.failure(.notFound(kind: "pool", name: name))) }
            guard pool.faultsRecorded == recorded else {
                for fd in installed.value { close(fd) }
                return reply(.failure(.supplierFailed("pool '\(name)': a supplier failed again while it was being checked")))
            }
            if state == .offline { install(installed.value, for: pool) }
            pool.clearFaults()
            events.record(.poolOnline, pool: name, detail: "pool '\(name)' is online again: its suppliers passed their checks")
            // Chunks whose zeroing waited for the pool go now.
            for index in reclaimRetries.indices where reclaimRetries[index].pool === pool { reclaimRetries[index].due = 0 }
            retryReclaims(now: monotonicNanoseconds())
            prepareChunks(pool)
            reply(.success(info(pool)))
        }
    }

    /// One supplier of a degraded pool: still the file we have open, not
    /// short, and write-back works.
    private static func recheck(_ supplier: Supplier, fd: Int32, faults: FaultInjector) throws(RemapError) {
        var open = stat()
        var named = stat()
        try systemCall("stat of the open supplier \(supplier.path)") { fstat(fd, &open) }
        guard stat(supplier.path, &named) == 0 else {
            throw .io(errno: Glibc.errno, context: "\(supplier.path): \(String(cString: strerror(Glibc.errno)))")
        }
        let same = open.st_mode & S_IFMT == S_IFBLK ? open.st_rdev == named.st_rdev : open.st_dev == named.st_dev && open.st_ino == named.st_ino
        guard same, open.st_nlink > 0 || open.st_mode & S_IFMT == S_IFBLK else {
            throw .invalidArgument("\(supplier.path) is not the file remapd has open (deleted or replaced); restore it and restart remapd")
        }
        let size = try SupplierFile.size(fd: fd, path: supplier.path)
        guard size >= supplier.sizeBytes else {
            throw .invalidArgument("\(supplier.path) is \(size) bytes, remap uses \(supplier.sizeBytes)")
        }
        let error = SupplierIO.sync(fd, faults: faults)
        if error != 0 { throw .io(errno: error, context: "fdatasync of \(supplier.path): \(String(cString: strerror(error)))") }
    }
}
