import Foundation
import RemapCore
import RemapLog
import Synchronization

/// When each connection of a listener must have sent its request, and a
/// thread that closes the connections that miss it.
///
/// libmicrohttpd's own timeout only measures silence: a client sending one
/// header byte every few seconds would keep a connection (and its thread)
/// forever. Here a request must be complete within `timeout` of the
/// connection's start, or of the end of the previous response on a
/// kept-alive connection. While a response is being sent there is no
/// deadline (an event stream or a large download may run for hours).
final class RequestDeadlines: Sendable {
    private struct Entry {
        let fd: Int32
        /// Monotonic nanoseconds; nil while a request is being answered.
        var deadline: Int64?
    }

    /// By connection (libmicrohttpd's handle, as a number). An entry is
    /// removed before libmicrohttpd closes the socket, so a socket found
    /// here under the lock is still that connection's.
    private let entries = Mutex<[UInt: Entry]>([:])
    private let timeoutNanoseconds: Int64
    private let running = Atomic<Bool>(false)
    private let stopped = DispatchSemaphore(value: 0)
    private let messages = LogThrottle()
    let timeoutSeconds: Int

    init(timeoutSeconds: Int) {
        self.timeoutSeconds = timeoutSeconds
        self.timeoutNanoseconds = Int64(timeoutSeconds) * 1_000_000_000
    }

    func opened(_ connection: OpaquePointer, fd: Int32) {
        let deadline = Self.now() + timeoutNanoseconds
        entries.withLock { $0[Self.key(connection)] = Entry(fd: fd, deadline: deadline) }
    }

    /// The request is complete: it is being answered.
    func requestReceived(_ connection: OpaquePointer) {
        entries.withLock { $0[Self.key(connection)]?.deadline = nil }
    }

    /// The response is sent: the next request on the connection has the
    /// full timeout again.
    func responseSent(_ connection: OpaquePointer) {
        let deadline = Self.now() + timeoutNanoseconds
        entries.withLock { $0[Self.key(connection)]?.deadline = deadline }
    }

    func closed(_ connection: OpaquePointer) {
        _ = entries.withLock { $0.removeValue(forKey: Self.key(connection)) }
    }

    /// Starts the thread that closes late connections (four checks a second).
    func start() {
        running.store(true, ordering: .relaxed)
        let thread = Thread { [self] in
            while running.load(ordering: .relaxed) {
                usleep(250_000)
                let closed = closeLate()
                if closed > 0 {
                    messages.log(.notice, "late", "HTTP API: closed \(closed) connection(s) that did not send a complete request within \(timeoutSeconds) s (--http-request-timeout)")
                }
            }
            stopped.signal()
        }
        thread.name = "remap-http-time"
        thread.start()
    }

    func stop() {
        guard running.exchange(false, ordering: .relaxed) else { return }
        stopped.wait()
    }

    /// Shuts down the sockets of connections past their deadline; their
    /// threads see the end of input and close them cleanly. Returns how many.
    private func closeLate() -> Int {
        let now = Self.now()
        return entries.withLock { entries in
            var closed = 0
            for (key, entry) in entries {
                guard let deadline = entry.deadline, deadline <= now else { continue }
                shutdown(entry.fd, Int32(SHUT_RDWR))
                entries[key]?.deadline = nil
                closed += 1
            }
            return closed
        }
    }

    private static func key(_ connection: OpaquePointer) -> UInt { UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(connection))) }

    private static func now() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }
}
