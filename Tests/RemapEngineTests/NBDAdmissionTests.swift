import Glibc
@testable import RemapEngine
import Testing

@Suite struct NBDAdmissionTests {
    @Test func a_clients_own_failure_skips_to_the_next_client() {
        for error in [EINTR, EAGAIN, ECONNABORTED, EPROTO, EPERM, ENETUNREACH, EHOSTUNREACH, ECONNRESET] {
            #expect(NBDAdmission.reaction(to: error) == .next, "errno \(error)")
        }
    }

    @Test func shortages_and_unknown_failures_pause_instead_of_stopping_the_listener() {
        for error in [EMFILE, ENFILE, ENOMEM, ENOBUFS, EIO, 12345] {
            #expect(NBDAdmission.reaction(to: error) == .pause, "errno \(error)")
        }
    }

    @Test func only_a_listener_that_is_gone_stops() {
        for error in [EBADF, EINVAL, ENOTSOCK, ECANCELED] {
            #expect(NBDAdmission.reaction(to: error) == .stop, "errno \(error)")
        }
    }

    @Test func pauses_double_from_100_ms_up_to_1_s_and_end_at_the_next_admission() {
        var admission = NBDAdmission()
        var now: Int64 = 1_000_000_000
        var pauses: [Int64] = []
        for _ in 0..<6 {
            admission.acceptFailed(listener: 7, error: ENOMEM, now: now)
            let wait = admission.untilNextResume(now: now)!
            pauses.append(wait)
            let early = admission.resumable(now: now + wait - 1)
            let due = admission.resumable(now: now + wait)
            #expect(early == [] && due == [7])
            now += wait
        }
        #expect(pauses == [100, 200, 400, 800, 1000, 1000].map { Int64($0) * 1_000_000 })
        // A client admitted ends the run: the next failure pauses 100 ms again.
        let admitted = admission.admits(3, serving: 0, limit: 10)
        #expect(admitted)
        admission.acceptFailed(listener: 7, error: ENOBUFS, now: now)
        #expect(admission.untilNextResume(now: now) == 100_000_000)
    }

    @Test(arguments: [EMFILE, ENFILE])
    func out_of_descriptors_closes_one_waiting_client(error: Int32) throws {
        let (listener, client) = try listenerWithAWaitingClient()
        defer { close(listener); close(client) }
        var admission = NBDAdmission()
        admission.acceptFailed(listener: listener, error: error, now: 0)
        var byte: UInt8 = 0
        #expect(read(client, &byte, 1) == 0, "the waiting client sees a close")
        #expect(admission.pausedListeners == [listener])
    }

    @Test(arguments: [ENOMEM, ENOBUFS])
    func a_shortage_of_memory_leaves_waiting_clients_waiting(error: Int32) throws {
        let (listener, client) = try listenerWithAWaitingClient()
        defer { close(listener); close(client) }
        var admission = NBDAdmission()
        admission.acceptFailed(listener: listener, error: error, now: 0)
        var byte: UInt8 = 0
        #expect(read(client, &byte, 1) == -1 && errno == EAGAIN, "still connected, waiting to be accepted")
        #expect(admission.pausedListeners == [listener])
    }

    /// A listening unix socket (abstract, autobound) and a client connected
    /// to it, not accepted yet; the client does not block on reads.
    private func listenerWithAWaitingClient() throws -> (listener: Int32, client: Int32) {
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(listener >= 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var length = socklen_t(MemoryLayout<sa_family_t>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, __CONST_SOCKADDR_ARG(__sockaddr__: $0), length) }
        }
        try #require(bound == 0 && listen(listener, 4) == 0)
        length = socklen_t(MemoryLayout<sockaddr_un>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, __SOCKADDR_ARG(__sockaddr__: $0), &length) }
        }
        let client = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
        let connected = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, __CONST_SOCKADDR_ARG(__sockaddr__: $0), length) }
        }
        try #require(connected == 0)
        return (listener, client)
    }
}
