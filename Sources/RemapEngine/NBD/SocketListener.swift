import CURing
import Glibc
import RemapCore

/// Listening sockets for the API and NBD servers.
public enum SocketListener {
    /// Binds a unix stream socket at `path` with mode `mode`. A stale socket
    /// file nobody answers on is replaced; a live one is an error, so two
    /// daemons never steal each other's socket.
    public static func unix(path: String, mode: mode_t = 0o660) throws(RemapError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else {
            throw .invalidArgument("socket path '\(path)' is longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.size)
        if isSocketAnswering(&address, length) {
            throw .inUse("another process is listening on \(path)")
        }
        var status = stat()
        if lstat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFSOCK else {
                throw .invalidArgument("\(path) exists and is not a socket")
            }
            unlink(path)
        }
        let fd = try systemCall("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do throws(RemapError) {
            _ = try withUnsafePointer(to: &address) { (pointer) throws(RemapError) in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (generic) throws(RemapError) in
                    try systemCall("bind \(path)") { bind(fd, __CONST_SOCKADDR_ARG(__sockaddr__: generic), length) }
                }
            }
            try systemCall("chmod \(path)") { chmod(path, mode) }
            try systemCall("listen \(path)") { listen(fd, 128) }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Whether `fd` is a unix socket (and not TCP), for sockets remapd did not bind itself.
    public static func isUnix(_ fd: Int32) -> Bool {
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, __SOCKADDR_ARG(__sockaddr__: $0), &length) }
        }
        return rc == 0 && address.ss_family == sa_family_t(AF_UNIX)
    }

    /// Gives `path` to group `group` (for the API socket's 0660 mode).
    public static func setGroup(of path: String, to group: String) throws(RemapError) {
        guard let entry = getgrnam(group) else { throw .invalidArgument("no such group '\(group)'") }
        try systemCall("chown \(path) to group \(group)") { chown(path, uid_t.max, entry.pointee.gr_gid) }
    }

    /// Binds a TCP socket on `HOST:PORT` (`127.0.0.1:10809`, `[::1]:8080`,
    /// `localhost:80`).
    public static func tcp(_ hostPort: String) throws(RemapError) -> Int32 {
        let (host, port) = try split(hostPort)
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, port, &hints, &result)
        guard rc == 0, let first = result else {
            throw .invalidArgument("cannot resolve '\(hostPort)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        let fd = try systemCall("socket(TCP)") { socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        do throws(RemapError) {
            try systemCall("bind \(hostPort)") { bind(fd, __CONST_SOCKADDR_ARG(__sockaddr__: first.pointee.ai_addr), first.pointee.ai_addrlen) }
            try systemCall("listen \(hostPort)") { listen(fd, 128) }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    static func split(_ hostPort: String) throws(RemapError) -> (String, String) {
        guard let colon = hostPort.lastIndex(of: ":") else {
            throw .invalidArgument("'\(hostPort)' is not HOST:PORT")
        }
        var host = String(hostPort[..<colon])
        let port = String(hostPort[hostPort.index(after: colon)...])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard let number = UInt16(port), number > 0, !host.isEmpty else {
            throw .invalidArgument("'\(hostPort)' is not HOST:PORT with a port from 1 to 65535")
        }
        return (host, port)
    }

    private static func isSocketAnswering(_ address: inout sockaddr_un, _ length: socklen_t) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, __CONST_SOCKADDR_ARG(__sockaddr__: $0), length) == 0 }
        }
    }
}
