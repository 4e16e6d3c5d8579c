import Glibc

/// A connected stream socket that is closed when the value goes away.
///
/// Blocking I/O with kernel timeouts (`SO_RCVTIMEO`/`SO_SNDTIMEO`) is all a
/// one-request command-line client needs; an event loop would only add code.
struct Socket: ~Copyable {
    private let descriptor: CInt

    private init(descriptor: CInt) {
        self.descriptor = descriptor
    }

    deinit {
        // Nothing useful can be done if close fails on a socket we are done with.
        _ = close(descriptor)
    }

    /// Connects to `address`, with `timeout` applied to the connect and to
    /// every later send and receive.
    ///
    /// - Throws: ``ClientError/cannotConnect(_:_:)`` or
    ///   ``ClientError/cannotResolve(host:reason:)``.
    static func connect(to address: ServerAddress, timeout seconds: Int) throws(ClientError) -> Socket {
        switch address {
        case .unixSocket(let path):
            do throws(Errno) {
                return try connectUnix(path: path, timeout: seconds)
            } catch {
                throw .cannotConnect(address, error)
            }
        case .tcp(let host, let port):
            return try connectTCP(host: host, port: port, timeout: seconds, address: address)
        }
    }

    /// Sends all of `bytes`, continuing after partial writes.
    func send(_ bytes: [UInt8]) throws(Errno) {
        var sent = 0
        while sent < bytes.count {
            // MSG_NOSIGNAL: a daemon that hangs up must give EPIPE, not kill us.
            sent += try valueOrErrno {
                bytes[sent...].withUnsafeBytes { raw in
                    Glibc.send(descriptor, raw.baseAddress, raw.count, CInt(MSG_NOSIGNAL))
                }
            }
        }
    }

    /// Receives up to `maximum` bytes; an empty result means the peer closed.
    func receive(maximum: Int = 64 * 1024) throws(Errno) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: maximum)
        let count = try valueOrErrno {
            buffer.withUnsafeMutableBytes { raw in recv(descriptor, raw.baseAddress, raw.count, 0) }
        }
        buffer.removeSubrange(count...)
        return buffer
    }

    /// Replaces the receive timeout set at connect time; `nil` waits for
    /// ever, as a stream of rare events must.
    func setReceiveTimeout(_ seconds: Int?) throws(Errno) {
        var limit = timeval(tv_sec: seconds ?? 0, tv_usec: 0)
        _ = try valueOrErrno {
            setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// Asks the kernel to probe an idle TCP connection, so that a peer that
    /// vanished without closing is noticed eventually. Unix sockets ignore it.
    func enableKeepAlive() {
        var on: CInt = 1
        // Best effort: without probes a dead peer is only noticed later.
        _ = setsockopt(descriptor, SOL_SOCKET, SO_KEEPALIVE, &on, socklen_t(MemoryLayout<CInt>.size))
    }

    // MARK: - Connecting

    private static func connectUnix(path: String, timeout: Int) throws(Errno) -> Socket {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        // sun_path must hold the path and its terminating NUL.
        guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw .fileNameTooLong
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }
        let socket = try open(family: AF_UNIX, timeout: timeout)
        try withUnsafePointer(to: &address) { (pointer) throws(Errno) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (generic) throws(Errno) in
                try socket.connect(generic, length: socklen_t(MemoryLayout<sockaddr_un>.size), timeout: timeout)
            }
        }
        return socket
    }

    private static func connectTCP(
        host: String, port: UInt16, timeout: Int, address: ServerAddress
    ) throws(ClientError) -> Socket {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = CInt(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0 else {
            let reason = status == EAI_SYSTEM ? Errno.current.description : String(cString: gai_strerror(status))
            throw .cannotResolve(host: host, reason: reason)
        }
        defer { freeaddrinfo(list) }

        // Try each address the name resolves to; report the last failure.
        var lastError = Errno(rawValue: EHOSTUNREACH)
        var entry = list
        while let info = entry {
            entry = info.pointee.ai_next
            guard let target = info.pointee.ai_addr else { continue }
            do throws(Errno) {
                let socket = try open(family: info.pointee.ai_family, timeout: timeout)
                try socket.connect(target, length: info.pointee.ai_addrlen, timeout: timeout)
                return socket
            } catch {
                lastError = error
            }
        }
        throw .cannotConnect(address, lastError)
    }

    private static func open(family: CInt, timeout: Int) throws(Errno) -> Socket {
        let descriptor = try valueOrErrno {
            socket(family, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        }
        let opened = Socket(descriptor: descriptor)
        var limit = timeval(tv_sec: timeout, tv_usec: 0)
        for option in [SO_RCVTIMEO, SO_SNDTIMEO] {
            _ = try valueOrErrno {
                setsockopt(descriptor, SOL_SOCKET, option, &limit, socklen_t(MemoryLayout<timeval>.size))
            }
        }
        return opened
    }

    /// Connects, finishing the handshake by hand if a signal interrupts it:
    /// an interrupted connect keeps going in the kernel and must not be
    /// restarted.
    private func connect(
        _ address: UnsafePointer<sockaddr>, length: socklen_t, timeout: Int
    ) throws(Errno) {
        do throws(Errno) {
            _ = try valueOrErrno(retryOnInterrupt: false) { Glibc.connect(descriptor, address, length) }
        } catch where error == .interrupted {
            try waitForConnect(timeout: timeout)
        } catch where error == .inProgress {
            // SO_SNDTIMEO expired during the handshake.
            throw .timedOut
        }
    }

    private func waitForConnect(timeout: Int) throws(Errno) {
        var poller = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
        let ready = try valueOrErrno { poll(&poller, 1, CInt(timeout * 1000)) }
        guard ready > 0 else { throw .timedOut }
        var pending: CInt = 0
        var size = socklen_t(MemoryLayout<CInt>.size)
        _ = try valueOrErrno { getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &pending, &size) }
        if pending != 0 { throw Errno(rawValue: pending) }
    }
}
