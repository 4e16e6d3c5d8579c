import Glibc
import RemapCore
import RemapLog

/// Room kept on the metadata's filesystem so a commit never fails for
/// space: a preallocated file that is given up when the filesystem runs
/// low (and made again when space returns). While low, new chunks are
/// refused with ENOSPC, so writes fail cleanly before any commit could.
public final class MetadataReserve: @unchecked Sendable {  // used on the engine thread only, after start()
    public static let size: UInt64 = 64 << 20
    /// Below this much free space (besides the reserve) the filesystem is "short".
    static let lowWater: UInt64 = 32 << 20
    static let highWater: UInt64 = 64 << 20

    let path: String
    private(set) var short = false

    public enum Change { case none, becameShort, recovered }

    /// Makes the reserve file at `path` if it is missing. A filesystem too
    /// full for it does not stop the daemon: it starts short (new chunks
    /// refused) and takes the reserve once space returns.
    public init(path: String) throws(RemapError) {
        self.path = path
        guard access(path, F_OK) != 0 else { return }
        do throws(RemapError) {
            try allocate()
        } catch {
            guard case .io(let errno, _) = error, errno == ENOSPC || errno == EDQUOT else { throw error }
            short = true
            log.warning("metadata filesystem is nearly full at start (\(freeBytes) bytes free): new chunks are refused until space returns")
        }
    }

    private func allocate() throws(RemapError) {
        let fd = try systemCall("creating \(path)") { open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600) }
        defer { close(fd) }
        if fallocate(fd, 0, 0, off_t(Self.size)) != 0 {
            let error = errno
            unlink(path)
            throw .io(errno: error, context: "allocating the metadata reserve \(path): \(String(cString: strerror(error)))")
        }
    }

    /// Free space on the filesystem of the reserve's directory (the file
    /// itself may be gone).
    private var freeBytes: UInt64 {
        var fs = statvfs()
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
        return statvfs(directory.isEmpty ? "/" : directory, &fs) == 0 ? UInt64(fs.f_bavail) * UInt64(fs.f_frsize) : 0
    }

    /// Checks the filesystem; gives up the reserve when low, takes it back
    /// when space returned.
    public func check() -> Change {
        let free = freeBytes
        if !short && free < Self.lowWater {
            short = true
            unlink(path)
            log.warning("metadata filesystem is nearly full (\(free) bytes free): new chunks are refused until space returns")
            return .becameShort
        }
        if short && free > Self.highWater + Self.size {
            guard (try? allocate()) != nil else { return .none }
            short = false
            log.notice("metadata filesystem has space again: new chunks are allowed")
            return .recovered
        }
        return .none
    }
}
