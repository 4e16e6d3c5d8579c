import CURing
import Glibc
import RemapCore
import RemapLog

/// The NBD server: its listeners, who gets in (`NBDAdmission`), the
/// connections, and what their requests did (for /metrics). Lives on the
/// engine thread, which drives it (`tick`, `stop`).
///
/// The NBD code (this folder) may use of the engine only the front-end
/// surface — `ExportDirectory` to find an export, `VolumeIO` to serve it
/// (IO/VolumeIO.swift) — and, for its sockets, the `IOQueue` it is given.
/// It holds no reference to the engine and names none of its state: outside
/// comments, this finds nothing in NBD/ (run from the repository root):
///
///     grep -rnwE 'Engine|engine|Volume|Pool|Reservation|Supplier' Sources/RemapEngine/NBD | grep -vE '^[^:]+:[0-9]+: *//'
///
/// and since `VolumeIO` keeps the engine and the volume private, the
/// compiler holds the NBD code to the surface too.
final class NBDServer {
    /// Socket I/O (accept, receive, send) for the connections.
    let ring: any IOQueue
    unowned let exports: any ExportDirectory
    /// The bounds in force; set before the first listener.
    var limits = Limits()
    private var listeners: [Int32] = []
    /// The credentials a TCP listener demands (STARTTLS); none on the unix socket.
    private var listenerCredentials: [Int32: TLSCredentials] = [:]
    private var connections: [ObjectIdentifier: NBDConnection] = [:]
    private var admission = NBDAdmission()
    private var stopping = false
    /// What each kind of request did since start, by its metric name.
    private(set) var commands: [String: CommandStatistics] = [:]

    init(ring: any IOQueue, exports: any ExportDirectory) {
        self.ring = ring
        self.exports = exports
    }

    var connectionCount: Int { connections.count }

    /// Descriptors numbered from here on are kept for the rest of the daemon.
    var descriptorCeiling: Int32 { admission.descriptorCeiling }

    /// Serves clients on a listening socket; with `tls`, they must start TLS
    /// before anything else (NBDConnection+TLS.swift).
    func serve(listener fd: Int32, tls: TLSCredentials?) {
        if listeners.isEmpty && admission.descriptorRoom < limits.nbdMaxConnections {
            log.warning("RLIMIT_NOFILE leaves room for about \(admission.descriptorRoom) NBD clients, fewer than --nbd-max-connections \(limits.nbdMaxConnections)")
        }
        listeners.append(fd)
        listenerCredentials[fd] = tls
        accept(on: fd, tls: tls)
    }

    /// Stops accepting and reading requests; what is in flight is answered.
    func stop() {
        stopping = true
        for fd in listeners { shutdown(fd, Int32(SHUT_RDWR)) }
        for connection in connections.values { connection.endInput() }
    }

    /// Drops idle or stuck clients, so they cannot pile up, and lets
    /// listeners whose pause is over accept again.
    func tick(now: Int64) {
        for connection in connections.values { connection.enforceDeadlines(now: now) }
        if !stopping {
            for listener in admission.resumable(now: now) { accept(on: listener, tls: listenerCredentials[listener]) }
        }
    }

    /// How long until a paused listener accepts again, if one is paused.
    func untilNextResume(now: Int64) -> Int64? {
        admission.untilNextResume(now: now)
    }

    /// Counts a finished request for /metrics.
    func record(command: String, bytes: Int, error: NBD.Error?, started: Int64) {
        var entry = commands[command] ?? CommandStatistics()
        entry.requests += 1
        entry.bytes += UInt64(bytes)
        if let error { entry.errors[error.name, default: 0] += 1 }
        entry.latency.observe(Double(monotonicNanoseconds() - started) / 1e9)
        commands[command] = entry
    }

    func connectionClosed(_ connection: NBDConnection) {
        connections[ObjectIdentifier(connection)] = nil
    }

    private func accept(on fd: Int32, tls: TLSCredentials?) {
        ring.accept(fd: fd) { [self] result in
            if result >= 0 {
                if stopping || !admission.admits(result, serving: connections.count, limit: limits.nbdMaxConnections) {
                    close(result)
                } else {
                    var one: Int32 = 1
                    setsockopt(result, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    let connection = NBDConnection(fd: result, server: self, credentials: tls)
                    connections[ObjectIdentifier(connection)] = connection
                    connection.greet()
                }
            } else {
                switch NBDAdmission.reaction(to: -result) {
                case .next:
                    break
                case .pause:
                    // Trying again at once would spin: the listener pauses.
                    if !stopping { admission.acceptFailed(listener: fd, error: -result, now: monotonicNanoseconds()) }
                    return
                case .stop:
                    // The listener was shut down (stop) or is broken.
                    if !stopping { log.error("NBD accept failed: \(String(cString: strerror(-result))): no more clients on this listener") }
                    return
                }
            }
            if !stopping { accept(on: fd, tls: tls) }
        }
    }
}
