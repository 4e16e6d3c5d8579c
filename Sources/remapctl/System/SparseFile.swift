import Glibc

/// A local image file being written at chosen offsets, where every block
/// not written stays a hole: `remapctl snapshot export`'s output.
///
/// The file is written under a temporary name (``partPath``) and appears
/// under its real name only once complete (``publish(replacing:)``), so a
/// reader never sees half an image. The descriptor is closed when the value
/// goes away; a file never published is removed then too.
struct SparseFile: ~Copyable {
    /// The name the finished image gets.
    let path: String
    /// Where it is written until then: `path` + `.part`.
    let partPath: String
    private let descriptor: CInt
    private var published = false

    /// Holes are left for zero blocks of this size, aligned to the file's
    /// offsets; 4 KiB is the block size of common file systems.
    static let holeBlockBytes = 4096

    private static let zeroBlock = [UInt8](repeating: 0, count: holeBlockBytes)

    /// Creates (or truncates) `path.part` with `sizeBytes` of holes.
    ///
    /// - Throws: ``ClientError/localFile(path:reason:)``.
    init(path: String, sizeBytes: Int) throws(ClientError) {
        let partPath = path + ".part"
        InterruptCleanup.remove(partPath)
        // O_NOFOLLOW: a symlink planted at the .part name must not redirect the write.
        let flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW
        let descriptor: CInt
        do throws(Errno) {
            descriptor = try valueOrErrno { open(partPath, flags, 0o666) }
        } catch {
            InterruptCleanup.forget()
            throw .localFile(path: partPath, reason: error.description)
        }
        do throws(Errno) {
            _ = try valueOrErrno { ftruncate(descriptor, off_t(sizeBytes)) }
        } catch {
            _ = close(descriptor)
            _ = unlink(partPath)
            InterruptCleanup.forget()
            throw .localFile(path: partPath, reason: "cannot make it \(sizeBytes) bytes long: \(error)")
        }
        self.path = path
        self.partPath = partPath
        self.descriptor = descriptor
    }

    deinit {
        // Nothing useful can be done if close fails on a file we are done with.
        _ = close(descriptor)
        if !published {
            _ = unlink(partPath)
        }
        InterruptCleanup.forget()
    }

    /// Writes `bytes` at `offset`, except the blocks of
    /// ``holeBlockBytes`` (aligned to file offsets) that are entirely zero,
    /// which stay holes.
    ///
    /// - Returns: How many bytes were written (the rest were zeros).
    func writeSkippingZeros(_ bytes: [UInt8], at offset: Int) throws(ClientError) -> Int {
        var written = 0
        var runStart: Int?  // index in `bytes` where a run of data blocks starts
        var position = 0
        while position < bytes.count {
            let blockEnd = min((offset + position) / Self.holeBlockBytes * Self.holeBlockBytes
                + Self.holeBlockBytes - offset, bytes.count)
            let isZero = Self.isAllZero(bytes[position..<blockEnd])
            if isZero, let start = runStart {
                try write(bytes[start..<position], at: offset + start)
                written += position - start
                runStart = nil
            } else if !isZero, runStart == nil {
                runStart = position
            }
            position = blockEnd
        }
        if let start = runStart {
            try write(bytes[start...], at: offset + start)
            written += bytes.count - start
        }
        return written
    }

    /// Whether `block` (at most ``holeBlockBytes``) holds only zeros.
    private static func isAllZero(_ block: ArraySlice<UInt8>) -> Bool {
        block.withUnsafeBytes { raw in
            zeroBlock.withUnsafeBytes { zeros in
                guard let data = raw.baseAddress, let zero = zeros.baseAddress else { return true }
                // memcmp: a byte loop is slow in debug builds, and images are large.
                return memcmp(data, zero, raw.count) == 0
            }
        }
    }

    private func write(_ bytes: ArraySlice<UInt8>, at offset: Int) throws(ClientError) {
        var done = 0
        while done < bytes.count {
            do throws(Errno) {
                done += try valueOrErrno {
                    bytes[(bytes.startIndex + done)...].withUnsafeBytes { raw in
                        pwrite(descriptor, raw.baseAddress, raw.count, off_t(offset + done))
                    }
                }
            } catch {
                throw .localFile(path: partPath, reason: error.description)
            }
        }
    }

    /// Flushes the file to disk and gives it its real name.
    ///
    /// - Parameter replacing: Whether an existing file of that name may be
    ///   replaced; without it one that appeared meanwhile is left alone and
    ///   the export fails.
    mutating func publish(replacing: Bool) throws(ClientError) {
        do throws(Errno) {
            _ = try valueOrErrno { fsync(descriptor) }
        } catch {
            throw .localFile(path: partPath, reason: error.description)
        }
        if replacing {
            try rename()
        } else {
            // link() fails if the name exists, where rename() would replace it.
            do throws(Errno) {
                _ = try valueOrErrno { link(partPath, path) }
                _ = unlink(partPath)
            } catch where error == .fileExists {
                throw .localFile(path: path, reason: "already exists (use --force to replace it)")
            } catch {
                // A file system without hard links: check, then rename.
                guard !Self.exists(path) else {
                    throw .localFile(path: path, reason: "already exists (use --force to replace it)")
                }
                try rename()
            }
        }
        published = true
    }

    private func rename() throws(ClientError) {
        do throws(Errno) {
            _ = try valueOrErrno { Glibc.rename(partPath, path) }
        } catch {
            throw .localFile(path: path, reason: "cannot rename \(partPath) to it: \(error)")
        }
    }

    /// Whether anything (a file, directory, device or dangling symlink) has
    /// the name `path`.
    static func exists(_ path: String) -> Bool {
        var status = stat()
        return lstat(path, &status) == 0
    }

    /// Whether `path` names a regular file (following symlinks); `nil` when
    /// nothing has that name.
    static func isRegularFile(_ path: String) -> Bool? {
        var status = stat()
        guard stat(path, &status) == 0 else { return exists(path) ? false : nil }
        return (status.st_mode & S_IFMT) == S_IFREG
    }
}

/// Removes an unfinished export's `.part` file when remapctl is interrupted
/// (SIGINT, SIGTERM), instead of leaving a large sparse file behind.
enum InterruptCleanup {
    /// The path to unlink, as a C string the signal handler can use without
    /// allocating. Set before the file exists and cleared once it is
    /// published or removed.
    // Written only on the main thread, read by the handler on that thread.
    private nonisolated(unsafe) static var pending: UnsafeMutablePointer<CChar>?

    /// Arranges for `path` to be removed if remapctl is interrupted.
    static func remove(_ path: String) {
        pending = strdup(path)
        for number in [SIGINT, SIGTERM] {
            signal(number) { number in
                if let path = InterruptCleanup.pending { unlink(path) }
                _exit(128 + number)
            }
        }
    }

    /// The file is gone or published: an interrupt now just ends remapctl.
    static func forget() {
        let path = pending
        pending = nil
        free(path)
    }
}
