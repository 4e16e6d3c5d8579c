import CURing
import Glibc
import RemapCore

/// Opening and creating the files and block devices that back pools.
public enum SupplierFile {
    /// Opens an existing supplier for reading and writing, checking it still
    /// has the size the metadata says.
    static func open(_ supplier: Supplier) throws(RemapError) -> Int32 {
        let fd = try systemCall("opening supplier \(supplier.path)") { Glibc.open(supplier.path, O_RDWR | O_CLOEXEC) }
        let size = try self.size(fd: fd, path: supplier.path)
        guard size >= supplier.sizeBytes else {
            close(fd)
            throw .invalidArgument("supplier \(supplier.path) is \(size) bytes, metadata says \(supplier.sizeBytes)")
        }
        return fd
    }

    /// Creates a new file supplier of `sizeBytes`; with `preallocate` its
    /// blocks are allocated on the host now (fallocate), so the pool's
    /// capacity is true. Refuses to overwrite an existing file.
    static func create(path: String, sizeBytes: UInt64, preallocate: Bool) throws(RemapError) -> (Supplier, Int32) {
        guard path.hasPrefix("/") else { throw .invalidArgument("supplier path '\(path)' must be absolute") }
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if !directory.isEmpty { try makeDirectories(directory) }
        let fd = try systemCall("creating supplier \(path)") {
            Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        }
        var preallocated = preallocate
        do throws(RemapError) {
            // Refuse what cannot fit before allocating: a failed fallocate can
            // leave the host filesystem full until the file is removed.
            let available = availableBytes(fd: fd)
            if preallocate, sizeBytes > available {
                throw .noSpace(requestedBytes: sizeBytes, availableBytes: available)
            }
            if preallocate {
                if fallocate(fd, 0, 0, off_t(sizeBytes)) != 0 {
                    let error = errno
                    if error == ENOSPC {
                        _ = ftruncate(fd, 0)  // give back what was allocated before measuring
                        throw .noSpace(requestedBytes: sizeBytes, availableBytes: availableBytes(fd: fd))
                    }
                    if error == EFBIG {
                        throw .invalidArgument("sizeBytes \(sizeBytes) is larger than the host filesystem allows for one file")
                    }
                    guard error == EOPNOTSUPP else {
                        throw .io(errno: error, context: "allocating \(sizeBytes) bytes for \(path): \(String(cString: strerror(error)))")
                    }
                    preallocated = false
                }
            }
            if ftruncate(fd, off_t(sizeBytes)) != 0 {
                let error = errno
                if error == EFBIG || error == EINVAL {
                    throw .invalidArgument("sizeBytes \(sizeBytes) is larger than the host filesystem allows for one file")
                }
                throw .io(errno: error, context: "sizing supplier \(path): \(String(cString: strerror(error)))")
            }
            try systemCall("syncing supplier \(path)") { fsync(fd) }
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
        let supplier = Supplier(id: randomUUID(), kind: .file, path: path, sizeBytes: sizeBytes, preallocated: preallocated)
        return (supplier, fd)
    }

    /// Makes the supplier a spec asks for: creates and allocates a file
    /// under `directory`, or opens a block device exclusively. Runs on a
    /// control-plane thread (allocating a large file takes time).
    static func make(_ spec: SupplierSpec, under directory: String) throws(RemapError) -> (supplier: Supplier, fd: Int32) {
        let path = spec.path
        guard path.hasPrefix("/") else { throw .invalidArgument("supplier path '\(path)' must be absolute") }
        guard !path.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }), !path.contains("//") else {
            throw .invalidArgument("supplier path '\(path)' must not contain '.', '..' or '//'")
        }
        switch spec {
        case .file(_, let size, let preallocate):
            let root = directory.hasSuffix("/") ? directory : directory + "/"
            guard path.hasPrefix(root), path.count > root.count, !path.hasSuffix("/") else {
                throw .invalidArgument("file supplier '\(path)' must be a file under the supplier directory \(directory)")
            }
            guard size > 0 else { throw .invalidArgument("sizeBytes must be greater than 0") }
            guard size <= UInt64(Int64.max) else { throw .invalidArgument("sizeBytes \(size) is too large") }
            // The text check above can be escaped through a symlinked
            // directory: every directory on the way must resolve inside the
            // real root, checked before anything is created in it (or a
            // file's existence is told).
            let parent = String(path[..<path.lastIndex(of: "/")!])  // invariant: path is absolute
            try makeDirectories(String(parent.dropFirst(root.count)), under: directory, for: path)
            var status = stat()
            if lstat(path, &status) == 0 {
                throw .alreadyExists(kind: "file", name: path, detail: "supplier file '\(path)' exists already; remap only uses files it creates")
            }
            return try create(path: path, sizeBytes: size, preallocate: preallocate)
        case .block:
            var status = stat()
            guard stat(path, &status) == 0 else {
                throw .invalidArgument("block device '\(path)' does not exist")
            }
            guard status.st_mode & S_IFMT == S_IFBLK else {
                throw .invalidArgument("'\(path)' is not a block device")
            }
            // O_EXCL on a block device fails with EBUSY while it is mounted,
            // part of another device, or opened exclusively elsewhere.
            let fd = Glibc.open(path, O_RDWR | O_EXCL | O_CLOEXEC)
            if fd < 0 {
                let error = errno
                if error == EBUSY { throw .inUse("block device '\(path)' is mounted or in use") }
                throw .io(errno: error, context: "opening \(path): \(String(cString: strerror(error)))")
            }
            let size: UInt64
            do throws(RemapError) { size = try self.size(fd: fd, path: path) } catch { close(fd); throw error }
            return (Supplier(id: randomUUID(), kind: .block, path: path, sizeBytes: size, preallocated: true), fd)
        }
    }

    /// Grows a file supplier to `sizeBytes`, allocating the new part on
    /// the host when the supplier is preallocated.
    static func grow(fd: Int32, _ supplier: Supplier, to sizeBytes: UInt64) throws(RemapError) {
        let extra = sizeBytes - supplier.sizeBytes
        if supplier.preallocated {
            let available = availableBytes(fd: fd)
            guard extra <= available else { throw .noSpace(requestedBytes: extra, availableBytes: available) }
            if fallocate(fd, 0, off_t(supplier.sizeBytes), off_t(extra)) != 0 {
                let error = errno
                _ = ftruncate(fd, off_t(supplier.sizeBytes))
                if error == ENOSPC { throw .noSpace(requestedBytes: extra, availableBytes: availableBytes(fd: fd)) }
                throw .io(errno: error, context: "growing \(supplier.path): \(String(cString: strerror(error)))")
            }
        } else if ftruncate(fd, off_t(sizeBytes)) != 0 {
            let error = errno
            if error == EFBIG || error == EINVAL {
                throw .invalidArgument("sizeBytes \(sizeBytes) is larger than the host filesystem allows for one file")
            }
            throw .io(errno: error, context: "growing \(supplier.path): \(String(cString: strerror(error)))")
        }
        try systemCall("syncing \(supplier.path)") { fsync(fd) }
    }

    /// Undoes `make` for suppliers that did not join a pool.
    static func discard(_ made: [(supplier: Supplier, fd: Int32)]) {
        for entry in made {
            close(entry.fd)
            if entry.supplier.kind == .file { unlink(entry.supplier.path) }
        }
    }

    static func availableBytes(fd: Int32) -> UInt64 {
        var fs = statvfs()
        return fstatvfs(fd, &fs) == 0 ? UInt64(fs.f_bavail) * UInt64(fs.f_frsize) : 0
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func size(fd: Int32, path: String) throws(RemapError) -> UInt64 {
        var status = stat()
        try systemCall("stat \(path)") { fstat(fd, &status) }
        if status.st_mode & S_IFMT == S_IFBLK {
            var bytes: UInt64 = 0
            try systemCall("size of \(path)") { ioctl(fd, curing_blkgetsize64(), &bytes) }
            return bytes
        }
        return UInt64(status.st_size)
    }

    /// Creates the missing directories of `relative` (a path below
    /// `root`), each only after the one it goes in proved to resolve inside
    /// `root`: a symlink to elsewhere gets nothing created through it.
    private static func makeDirectories(_ relative: String, under root: String, for path: String) throws(RemapError) {
        guard let realRoot = realPath(root) else {
            throw .io(errno: errno, context: "resolving the supplier directory \(root): \(String(cString: strerror(errno)))")
        }
        func inside(_ directory: String) -> Bool {
            guard let real = realPath(directory) else { return false }
            return real == realRoot || real.hasPrefix(realRoot.hasSuffix("/") ? realRoot : realRoot + "/")
        }
        var current = root.hasSuffix("/") ? String(root.dropLast()) : root
        for component in relative.split(separator: "/") {
            current += "/" + component
            // A new directory is made in one already checked: it is inside.
            if mkdir(current, 0o755) == 0 { continue }
            guard errno == EEXIST else {
                throw .io(errno: errno, context: "creating directory \(current): \(String(cString: strerror(errno)))")
            }
            guard inside(current) else {
                throw .invalidArgument("file supplier '\(path)' resolves outside the supplier directory \(root)")
            }
        }
    }

    /// mkdir -p: creates `path` and its missing parents with `mode`.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws(RemapError) {
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw .io(errno: errno, context: "creating directory \(current): \(String(cString: strerror(errno)))")
            }
        }
    }
}
