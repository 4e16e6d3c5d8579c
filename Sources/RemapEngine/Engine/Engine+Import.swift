import Glibc
import RemapCore
import RemapLog
import RemapStore
import Synchronization

extension Engine {
    // MARK: - Import

    /// Creates volume `spec.name` and fills it from the raw image at `path`
    /// in the background; holes and all-zero blocks stay unallocated. The
    /// volume is not exported until the import is done; on failure it is
    /// deleted. Returns the running operation and the new volume.
    public func importVolume(_ spec: VolumeSpec, sizeGiven: Bool, from path: String) throws(RemapError) -> (OperationInfo, VolumeInfo) {
        let fd = try openImportSource(path)
        var status = stat()
        fstat(fd, &status)
        let fileSize = UInt64(status.st_size)
        var spec = spec
        if !sizeGiven { spec.sizeBytes = max(512, (fileSize + 511) / 512 * 512) }
        guard spec.sizeBytes >= fileSize else {
            close(fd)
            throw .invalidArgument("sizeBytes \(spec.sizeBytes) is smaller than the file's \(fileSize) bytes")
        }
        let info: VolumeInfo
        do throws(RemapError) {
            let (created, isNew) = try createVolume(spec, forImport: true)
            guard isNew else {
                throw .alreadyExists(kind: "volume", name: spec.name, detail: "volume '\(spec.name)' exists already")
            }
            info = created
        } catch {
            close(fd)
            throw error
        }
        let operation = OperationInfo(
            id: randomUUID(), kind: "import", state: .running, volume: spec.name, source: path, totalBytes: fileSize,
            doneBytes: 0, progress: fileSize == 0 ? 1 : 0, createdAt: utcTimestamp())
        operations.add(operation)
        let volumeName = spec.name
        let chunkSize = (try? poolInfo(named: spec.pool).chunkSizeBytes) ?? Pool.defaultChunkSize
        startThread(name: "remap-import") { [self] in
            runImport(operation.id, volume: volumeName, fd: fd, size: fileSize, chunkSize: chunkSize)
            close(fd)
        }
        return (operation, info)
    }

    /// Opens an import source: an absolute path to a regular file under the
    /// supplier directory (the daemon runs as root: callers may only make it
    /// read what they could put there).
    private func openImportSource(_ path: String) throws(RemapError) -> Int32 {
        guard path.hasPrefix("/") else { throw .invalidArgument("source file '\(path)' must be an absolute path") }
        guard let real = SupplierFile.realPath(path) else {
            throw .invalidArgument("source file '\(path)' does not exist or cannot be resolved")
        }
        let root = SupplierFile.realPath(supplierDirectory) ?? supplierDirectory
        guard real.hasPrefix(root.hasSuffix("/") ? root : root + "/") else {
            throw .invalidArgument("source file '\(path)' must lie under the supplier directory \(supplierDirectory)")
        }
        // Non-blocking: opening a FIFO (or a device) for reading would wait
        // for a writer, holding this API thread; it is refused just below.
        let fd = Glibc.open(real, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else {
            throw .invalidArgument("source file '\(path)' cannot be opened: \(String(cString: strerror(errno)))")
        }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw .invalidArgument("source file '\(path)' is not a regular file")
        }
        // A regular file's reads never block; clear the flag all the same.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return fd
    }

    /// The import thread: copies the file's data regions, a megabyte at a
    /// time, through the engine's own write path; then flushes.
    private func runImport(_ id: String, volume name: String, fd: Int32, size: UInt64, chunkSize: UInt64) {
        let block = 1 << 20
        let buffer = IOBuffer(count: block)
        var failure: RemapError?
        var position: UInt64 = 0
        copying: while position < size {
            let dataStart = lseek(fd, off_t(position), SEEK_DATA)
            if dataStart < 0 { break }  // ENXIO: only a hole is left
            let holeStart = lseek(fd, off_t(dataStart), SEEK_HOLE)
            let end = holeStart < 0 ? size : min(UInt64(holeStart), size)
            position = UInt64(dataStart)
            while position < end {
                if operations.isCancelled(id) {
                    failure = .inUse("the import was cancelled")
                    break copying
                }
                let count = Int(min(UInt64(block), end - position))
                let got = pread(fd, buffer.pointer, count, off_t(position))
                guard got == count else {
                    failure = .io(errno: got < 0 ? errno : EIO, context: "reading the import source")
                    break copying
                }
                // Chunks of zeros are left unallocated.
                do throws(RemapError) {
                    for run in dataRuns(buffer.pointer, count: count, at: position, chunkSize: chunkSize) {
                        try importWrite(name, at: position + UInt64(run.lowerBound), buffer, run)
                    }
                } catch {
                    failure = error
                    break copying
                }
                position += UInt64(count)
                let done = position
                operations.update(id) { $0.doneBytes = done; $0.progress = Double(done) / Double(max(size, 1)) }
            }
        }
        if failure == nil {
            do throws(RemapError) {
                try call { [self] (reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) in
                    guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
                    volumeIO(for: volume).flush { reply($0) }
                }
            } catch {
                failure = error
            }
        }
        // The pool of the volume, which is no longer held (nil: it is gone).
        let pool: String? = (try? call { [self] reply in
            let volume = volumes[name]
            if let volume { importing.remove(volume.key) }
            reply(.success(volume?.pool.name))
        }) ?? nil
        let poolName = pool ?? ""
        if let failure {
            log.error("import of '\(name)' failed: \(failure); deleting the volume")
            if pool != nil { try? deleteVolume(named: name) }
        }
        let finished = utcTimestamp()
        let outcome = failure
        operations.update(id) { operation in
            operation.state = failure == nil ? .succeeded : (operations.isCancelled(id) ? .cancelled : .failed)
            operation.failure = failure
            operation.finishedAt = finished
            if failure == nil { operation.doneBytes = size; operation.progress = 1 }
        }
        post { [self] in
            events.record(.importFinished, pool: poolName, volume: name,
                          detail: outcome.map { "import of volume '\(name)' failed: \($0)" } ?? "import of volume '\(name)' finished")
        }
    }

    /// Cancels a running import (its volume is deleted) and answers the
    /// operation as it ended; forgets a finished one (nil).
    public func cancelOperation(_ id: String) throws(RemapError) -> OperationInfo? {
        guard let operation = operations.find(id) else { throw .notFound(kind: "operation", name: id) }
        guard operation.state == .running else {
            operations.forget(id)
            return nil
        }
        operations.requestCancel(id)
        // The import thread sees the request between two blocks and ends it.
        guard let ended = operations.waitForEnd(id, timeoutNanoseconds: 30_000_000_000) else {
            throw .internal("the import did not stop within 30 s")
        }
        return ended
    }

    /// Writes `run` of `buffer` to volume `name` at `offset` through the
    /// engine's write path; blocks until it is done.
    private func importWrite(_ name: String, at offset: UInt64, _ buffer: IOBuffer, _ run: Range<Int>) throws(RemapError) {
        let box = UncheckedBox(buffer)
        try call { [self] (reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            volumeIO(for: volume).write(offset: offset, length: run.count, from: box.value.pointer + run.lowerBound,
                                        owner: box.value, fua: false) { reply($0) }
        }
    }
}

/// The runs of `count` bytes at `data` (which lie at byte `position` of a
/// volume) that are not all zero, cut at chunk boundaries: a chunk of zeros
/// is left out, so it stays unallocated.
func dataRuns(_ data: UnsafeRawPointer, count: Int, at position: UInt64, chunkSize: UInt64) -> [Range<Int>] {
    var runs: [Range<Int>] = []
    var piece = 0
    while piece < count {
        let pieceEnd = min(count, piece + Int(chunkSize - (position + UInt64(piece)) % chunkSize))
        if !isAllZero(data + piece, pieceEnd - piece) {
            if let last = runs.last, last.upperBound == piece {
                runs[runs.count - 1] = last.lowerBound..<pieceEnd
            } else {
                runs.append(piece..<pieceEnd)
            }
        }
        piece = pieceEnd
    }
    return runs
}

/// Whether `count` bytes at `pointer` are all zero.
func isAllZero(_ pointer: UnsafeRawPointer, _ count: Int) -> Bool {
    var index = 0
    while index + 8 <= count {
        if pointer.loadUnaligned(fromByteOffset: index, as: UInt64.self) != 0 { return false }
        index += 8
    }
    while index < count {
        if pointer.load(fromByteOffset: index, as: UInt8.self) != 0 { return false }
        index += 1
    }
    return true
}
