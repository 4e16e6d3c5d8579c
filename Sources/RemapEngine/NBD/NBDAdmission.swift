import CURing
import Glibc
import RemapCore
import RemapLog

/// Who gets in over NBD, and what the listeners do when the process is out
/// of file descriptors. Lives on the engine thread.
///
/// A client is refused — closed at once, before the greeting — while
/// `--nbd-max-connections` clients are served, or when the descriptor it was
/// given is one of those kept for the rest of the daemon (the REST API's
/// connections, supplier and metadata files): an eighth of RLIMIT_NOFILE,
/// at least 32. So NBD clients alone never exhaust the descriptors. When the
/// process is out of them all the same (EMFILE, ENFILE), a listener pauses,
/// 100 ms doubling up to 1 s, instead of failing again at once; at each
/// pause the spare descriptor kept for the purpose is closed to accept and
/// close one waiting client, so clients see a close instead of waiting in
/// the backlog. A burst of refusals is logged once, when it begins and when
/// it ends. Other accept failures that may pass (out of memory or buffers)
/// pause the same way; a client's own failures skip to the next client.
struct NBDAdmission {
    /// Descriptors numbered from here on are kept for the rest of the daemon.
    let descriptorCeiling: Int32
    /// RLIMIT_NOFILE (soft) at start.
    private let descriptorLimit: Int64
    /// Clients refused since the last one admitted.
    private var refused = 0
    /// The pause after the last failure waited out; 0 while accepts succeed.
    private var pause: Int64 = 0
    /// Listeners waiting out a pause, and when to try them again.
    private var paused: [(listener: Int32, until: Int64)] = []
    /// Closed to accept one client when there is no descriptor left.
    private var spareFD: Int32

    init() {
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        descriptorLimit = Int64(clamping: limit.rlim_cur)
        descriptorCeiling = Int32(clamping: descriptorLimit - max(32, descriptorLimit / 8))
        spareFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    /// Roughly how many NBD clients the descriptor limit leaves room for,
    /// with what is open now.
    var descriptorRoom: Int { Int(descriptorCeiling) - Int(spareFD) }

    /// Whether to serve a client that was given descriptor `fd`, with
    /// `serving` clients connected already.
    mutating func admits(_ fd: Int32, serving: Int, limit: Int) -> Bool {
        if pause > 0 {
            log.notice("NBD listeners accept again")
            pause = 0
        }
        if spareFD < 0 { spareFD = open("/dev/null", O_RDONLY | O_CLOEXEC) }
        let reason: String
        if serving >= limit {
            reason = "NBD connection limit (\(limit)) reached"
        } else if fd >= descriptorCeiling {
            reason = "NBD clients reached the file descriptors kept for the API and files (the last \(descriptorLimit - Int64(descriptorCeiling)) of RLIMIT_NOFILE \(descriptorLimit))"
        } else {
            if refused > 0 { log.notice("NBD clients are admitted again (\(refused) refused meanwhile)") }
            refused = 0
            return true
        }
        if refused == 0 { log.warning("\(reason): closing new clients until one leaves") }
        refused += 1
        return false
    }

    /// What a listener does after accept failed with `error` (an errno).
    enum AcceptFailure: Equatable {
        /// The failure was the waiting client's own (it left, a network
        /// error, a firewall): accept the next one at once.
        case next
        /// The process or the system is short of something (descriptors,
        /// memory, buffers, or an error not known here): pause, then try
        /// again, so a persistent failure neither spins nor stops NBD.
        case pause
        /// The listener itself is gone (closed at stop) or not a listening
        /// socket: trying again cannot succeed.
        case stop
    }

    /// How a listener answers accept's `error`. Linux passes a pending
    /// connection's network errors to accept, to be treated like EAGAIN
    /// (accept(2)); anything else not known to be final is waited out.
    static func reaction(to error: Int32) -> AcceptFailure {
        switch error {
        case EINTR, EAGAIN, ECONNABORTED, EPROTO, EPERM, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET,
             EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH, ETIMEDOUT, ECONNRESET:
            return .next
        case EBADF, EINVAL, ENOTSOCK, EFAULT, ECANCELED:
            return .stop
        default:
            return .pause
        }
    }

    /// `listener` failed to accept with `error`, one `reaction(to:)` says to
    /// wait out: it pauses, 100 ms doubling up to 1 s, logged when a run of
    /// failures begins. Out of descriptors (EMFILE, ENFILE), one waiting
    /// client is closed too, with the spare descriptor kept for that.
    mutating func acceptFailed(listener: Int32, error: Int32, now: Int64) {
        if pause == 0 {
            switch error {
            case EMFILE: log.warning("out of file descriptors (RLIMIT_NOFILE reached): NBD clients are closed until some are free")
            case ENFILE: log.warning("out of file descriptors (the system's file table is full): NBD clients are closed until some are free")
            default: log.warning("NBD accept failed (\(String(cString: strerror(error)))): the listener pauses and tries again")
            }
        }
        pause = pause == 0 ? 100_000_000 : min(2 * pause, 1_000_000_000)
        paused.append((listener, now + pause))
        guard error == EMFILE || error == ENFILE else { return }
        if spareFD >= 0 {
            close(spareFD)
            spareFD = -1
        }
        // poll first: the engine thread must never block in accept.
        var waiting = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        if poll(&waiting, 1, 0) == 1 {
            let client = accept4(listener, __SOCKADDR_ARG(__sockaddr__: nil), nil, Int32(SOCK_CLOEXEC.rawValue))
            if client >= 0 { close(client) }
        }
        spareFD = open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    /// Whether a listener is waiting out a pause (for tests and logs).
    var pausedListeners: [Int32] { paused.map(\.listener) }

    /// The paused listeners due to accept again by `now`.
    mutating func resumable(now: Int64) -> [Int32] {
        let due = paused.filter { $0.until <= now }.map(\.listener)
        paused.removeAll { $0.until <= now }
        return due
    }

    /// Nanoseconds until the next paused listener is due, if any: at least
    /// a millisecond (a ring wait of 0 would wait without end).
    func untilNextResume(now: Int64) -> Int64? {
        paused.map { max(1_000_000, $0.until - now) }.min()
    }
}
