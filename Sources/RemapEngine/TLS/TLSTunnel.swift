import CGnuTLS
import CURing
import Glibc
import RemapCore
import RemapLog

/// Terminates TLS for one NBD connection, on a thread of its own: the
/// client's TCP socket carries TLS records, and one end of a socketpair
/// carries the same bytes in plaintext. The connection's other end of the
/// pair takes the socket's place on the engine thread, so the NBD code
/// after STARTTLS is exactly the code without TLS (NBDConnection+TLS.swift).
///
/// The thread blocks only in poll(2): both descriptors are non-blocking, and
/// each direction moves through a bounded window, so a client that stops
/// reading stops the replies (the engine's send waits on the full pair, as
/// on a full socket) without stopping the requests, and the other way round.
/// One thread does both directions: GnuTLS sessions may not be driven by
/// two threads where TLS 1.3 key updates make a receive send.
///
/// Endings: the engine closing (or shutting down) its end ends the tunnel
/// after the replies it wrote are sent, with a TLS close_notify; the client
/// closing shuts down the pair's write side, so the engine sees the end of
/// its input and finishes what is in flight; a TLS error closes both sides.
final class TLSTunnel: @unchecked Sendable {  // after start, touched by its own thread only
    /// Bytes held in each direction: a few TLS records (16 KiB each).
    static let windowBytes = 64 * 1024

    private let session: gnutls_session_t
    private let network: Int32
    private let plaintext: Int32
    /// Decrypted request bytes for the engine, and reply bytes for the client.
    private let toEngine = Window(capacity: windowBytes)
    private let toClient = Window(capacity: windowBytes)
    /// The client sent close_notify or closed TCP: nothing more to decrypt.
    private var clientEnded = false
    /// The engine can take no more input (its end is shut down or closed).
    private var engineInputEnded = false
    /// The engine closed its end: no more replies will come.
    private var engineEnded = false
    /// The session broke: no close_notify can follow.
    private var failed = false

    private init(session: gnutls_session_t, network: Int32, plaintext: Int32) {
        self.session = session
        self.network = network
        self.plaintext = plaintext
    }

    /// Starts terminating TLS on `socket` (after the STARTTLS reply went out
    /// in plaintext on it) and returns the plaintext descriptor that takes
    /// its place. The tunnel owns `socket` once this returns; after a
    /// throw the caller still does.
    /// The pair's descriptors must be numbered below `ceiling`: those from
    /// there on are kept for the rest of the daemon (NBDAdmission), and a
    /// TLS client needs three where a plain one needs one.
    static func start(socket: Int32, credentials: TLSCredentials, below ceiling: Int32) throws(RemapError) -> Int32 {
        var pair: [Int32] = [-1, -1]
        do throws(RemapError) {
            try systemCall("socketpair for TLS") { socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) }
            guard pair.allSatisfy({ $0 < ceiling }) else {
                throw .io(errno: EMFILE, context: "no file descriptors left for TLS connections (the rest are kept for the API and files)")
            }
            let tunnel = TLSTunnel(session: try credentials.makeSession(socket: socket), network: socket, plaintext: pair[1])
            let rc = tryStartThread(name: "remap-tls") { tunnel.run() }
            guard rc == 0 else {
                gnutls_deinit(tunnel.session)
                throw .io(errno: rc, context: "starting a TLS thread: \(String(cString: strerror(rc)))")
            }
            return pair[0]
        } catch {
            for fd in pair where fd >= 0 { close(fd) }
            throw error
        }
    }

    private func run() {
        defer {
            gnutls_deinit(session)
            close(network)
            close(plaintext)
        }
        // Only this thread uses them from now on (the engine's end of the
        // pair stays as the socket was).
        for fd in [network, plaintext] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        guard handshake() else { return }
        while !finished {
            if !advance() { wait() }
        }
        if !failed { sayGoodbye() }
    }

    // MARK: - Handshake

    /// Shakes hands with the client; false if it failed or the engine gave
    /// up on the connection meanwhile (its handshake deadline).
    private func handshake() -> Bool {
        while true {
            let rc = gnutls_handshake(session)
            if rc == GNUTLS_E_SUCCESS { return true }
            if rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED {
                var fds = [pollfd(fd: network, events: networkEvents(), revents: 0),
                           pollfd(fd: plaintext, events: Int16(POLLIN), revents: 0)]
                _ = poll(&fds, 2, -1)
                // The engine writes nothing before the client has sent an
                // option over TLS: its end being readable means it is gone.
                if fds[1].revents != 0 { return false }
                continue
            }
            if gnutls_error_is_fatal(rc) == 0 { continue }  // a warning alert: go on
            log.notice("NBD client dropped: TLS handshake failed: \(tlsErrorText(Int(rc)))")
            return false
        }
    }

    // MARK: - Moving bytes

    private var finished: Bool { engineEnded && toClient.isEmpty }

    /// Waits for, in each direction, what the last attempt found missing.
    private var wantNetwork: Int16 = 0
    private var wantPlaintext: Int16 = 0

    /// Moves what can move without waiting; false if nothing could.
    private func advance() -> Bool {
        wantNetwork = 0
        wantPlaintext = 0
        let moved = [decryptFromClient(), passToEngine(), takeFromEngine(), encryptToClient()]
        return failed || moved.contains(true)
    }

    /// Decrypts records until the window is full or the socket has no more.
    private func decryptFromClient() -> Bool {
        var moved = false
        while !failed && !clientEnded && !engineInputEnded && toEngine.hasRoom {
            let count = gnutls_record_recv(session, toEngine.free, toEngine.room)
            if count > 0 {
                toEngine.filled(Int(count))
            } else if count == 0 || count == GNUTLS_E_PREMATURE_TERMINATION {
                clientEnded = true
            } else if count == GNUTLS_E_AGAIN || count == GNUTLS_E_INTERRUPTED {
                wantNetwork |= networkEvents()
                return moved
            } else if gnutls_error_is_fatal(Int32(count)) != 0 {
                fail("receiving", Int(count))
            }  // else a warning alert, or a renegotiation GnuTLS refused: read on
            moved = true
        }
        return moved
    }

    private func passToEngine() -> Bool {
        if !toEngine.isEmpty && !engineInputEnded {
            let count = send(plaintext, toEngine.data, toEngine.count, Int32(MSG_NOSIGNAL))
            if count > 0 {
                toEngine.drained(count)
            } else if errno == EAGAIN || errno == EINTR {
                wantPlaintext |= Int16(POLLOUT)
                return false
            } else {
                engineInputEnded = true  // it stopped reading requests; replies may still come
            }
            return true
        }
        if clientEnded && toEngine.isEmpty && !engineInputEnded {
            shutdown(plaintext, Int32(SHUT_WR))
            engineInputEnded = true
            return true
        }
        return false
    }

    private func takeFromEngine() -> Bool {
        guard !engineEnded && toClient.isEmpty else { return false }
        let count = recv(plaintext, toClient.free, toClient.room, 0)
        if count > 0 {
            toClient.filled(count)
        } else if count < 0 && (errno == EAGAIN || errno == EINTR) {
            wantPlaintext |= Int16(POLLIN)
            return false
        } else {
            engineEnded = true
        }
        return true
    }

    /// Sends records until the window is empty or the socket is full.
    private func encryptToClient() -> Bool {
        var moved = false
        while !failed && !toClient.isEmpty {
            // After GNUTLS_E_AGAIN the same bytes are offered again: the
            // window's front does not move until they are taken.
            let count = gnutls_record_send(session, toClient.data, toClient.count)
            if count > 0 {
                toClient.drained(count)
            } else if count == GNUTLS_E_AGAIN || count == GNUTLS_E_INTERRUPTED {
                wantNetwork |= networkEvents()
                return moved
            } else {
                fail("sending", Int(count))
            }
            moved = true
        }
        return moved
    }

    private func wait() {
        var fds = [pollfd(fd: network, events: wantNetwork, revents: 0),
                   pollfd(fd: plaintext, events: wantPlaintext, revents: 0)]
        _ = poll(&fds, 2, -1)
    }

    /// What the network socket must become for the blocked GnuTLS call to go on.
    private func networkEvents() -> Int16 {
        Int16(gnutls_record_get_direction(session) == 1 ? POLLOUT : POLLIN)
    }

    /// Ends both sides after a TLS error; a client that just went away is not news.
    private func fail(_ doing: String, _ code: Int) {
        if code != Int(GNUTLS_E_PUSH_ERROR) && code != Int(GNUTLS_E_PULL_ERROR) {
            log.notice("NBD client dropped: TLS error \(doing): \(tlsErrorText(code))")
        }
        clientEnded = true
        engineInputEnded = true
        engineEnded = true
        toClient.clear()
        failed = true
    }

    /// A close_notify, if the client is still there to take it; waits at
    /// most a second for room on the socket.
    private func sayGoodbye() {
        let deadline = monotonicNanoseconds() + 1_000_000_000
        while true {
            let rc = gnutls_bye(session, GNUTLS_SHUT_WR)
            guard rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED else { return }
            let left = deadline - monotonicNanoseconds()
            guard left > 0 else { return }
            var fds = [pollfd(fd: network, events: networkEvents(), revents: 0)]
            _ = poll(&fds, 1, Int32(left / 1_000_000) + 1)
        }
    }
}

/// Bytes on their way in one direction: `data` holds `count` bytes, `free`
/// has `room` for more. Emptied windows start over from the front.
private final class Window {
    private let buffer: UnsafeMutableRawPointer
    private let capacity: Int
    private var start = 0
    private var end = 0

    init(capacity: Int) {
        self.capacity = capacity
        buffer = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { buffer.deallocate() }

    var data: UnsafeMutableRawPointer { buffer + start }
    var count: Int { end - start }
    var isEmpty: Bool { start == end }
    var free: UnsafeMutableRawPointer { buffer + end }
    var room: Int { capacity - end }
    var hasRoom: Bool { end < capacity }

    func filled(_ bytes: Int) { end += bytes }

    func drained(_ bytes: Int) {
        start += bytes
        if start == end { clear() }
    }

    func clear() {
        start = 0
        end = 0
    }
}
