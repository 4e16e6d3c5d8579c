import CURing
import Glibc
import RemapCore

/// Opening and creating the files and block devices that back pools.
enum SupplierFile {
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
            if preallocate {
                if fallocate(fd, 0, 0, off_t(sizeBytes)) != 0 {
                    let error = errno
                    guard error == EOPNOTSUPP else {
                        throw .io(errno: error, context: "allocating \(sizeBytes) bytes for \(path): \(String(cString: strerror(error)))")
                    }
                    preallocated = false
                }
            }
            try systemCall("sizing supplier \(path)") { ftruncate(fd, off_t(sizeBytes)) }
            try systemCall("syncing supplier \(path)") { fsync(fd) }
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
        let supplier = Supplier(id: randomUUID(), kind: .file, path: path, sizeBytes: sizeBytes, preallocated: preallocated)
        return (supplier, fd)
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

    static func makeDirectories(_ path: String) throws(RemapError) {
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw .io(errno: errno, context: "creating directory \(current): \(String(cString: strerror(errno)))")
            }
        }
    }
}
