import CURing
import Glibc
import RemapCore
import RemapLog

/// An io_uring instance and the completions it owes.
///
/// Each submitted operation gets a slot; the slot's handler runs on the
/// ring's thread when the completion arrives, with the raw result (bytes or
/// -errno). A buffer passed to an operation must stay alive until its handler
/// runs: callers keep it alive by capturing its owner in the handler.
final class Ring: IOQueue {
    let name = "io_uring"

    /// `struct io_uring` must not move while the kernel knows it: it lives
    /// on the heap, allocated once.
    private let ring: UnsafeMutablePointer<io_uring>
    private var handlers: [Handler?] = []
    private var freeSlots: [Int] = []
    private var cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private static let batch = 64
    /// Created disabled: `activate` (on the engine thread) enables it.
    private var disabled: Bool

    init(entries: UInt32) throws(RemapError) {
        // Set up before any stored property: a throw after them would run
        // deinit on a ring that never existed.
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        ring.initialize(to: io_uring())
        // Only the engine thread submits and reaps: tell the kernel, so it
        // runs completion work when that thread waits instead of
        // interrupting it (6.1+). The ring starts disabled and is enabled
        // from the engine thread, which becomes its single issuer.
        var parameters = io_uring_params()
        parameters.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED
        var rc = io_uring_queue_init_params(entries, ring, &parameters)
        var disabled = true
        if rc == -EINVAL {
            rc = io_uring_queue_init(entries, ring, 0)
            disabled = false
        }
        if rc < 0 {
            ring.deallocate()
            throw .io(errno: -rc, context: "io_uring_queue_init: \(String(cString: strerror(-rc)))")
        }
        self.ring = ring
        self.disabled = disabled
        cqes = .allocate(capacity: Self.batch)
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
        cqes.deallocate()
    }

    private func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        while true {
            if let sqe = io_uring_get_sqe(ring) { return sqe }
            // Queue full: hand what is queued to the kernel and take a fresh entry.
            _ = io_uring_submit(ring)
        }
    }

    fileprivate func prepare(_ handler: @escaping Handler, _ fill: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
            handlers[slot] = handler
        } else {
            slot = handlers.count
            handlers.append(handler)
        }
        let entry = sqe()
        fill(entry)
        entry.pointee.user_data = UInt64(slot)
    }

    func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        prepare(handler) { io_uring_prep_read($0, fd, buffer, UInt32(count), offset) }
    }

    func write(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        prepare(handler) { io_uring_prep_write($0, fd, buffer, UInt32(count), offset) }
    }

    func receive(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, _ handler: @escaping Handler) {
        prepare(handler) { io_uring_prep_recv($0, fd, buffer, count, 0) }
    }

    /// fallocate(2) on the ring (mode FALLOC_FL_*).
    func allocateSpace(fd: Int32, mode: Int32, offset: UInt64, length: UInt64, _ handler: @escaping Handler) {
        prepare(handler) { io_uring_prep_fallocate($0, fd, mode, off_t(offset), off_t(length)) }
    }

    func accept(fd: Int32, _ handler: @escaping Handler) {
        prepare(handler) { io_uring_prep_accept($0, fd, nil, nil, Int32(SOCK_CLOEXEC.rawValue)) }
    }

    func readEvent(fd: Int32, into buffer: UnsafeMutableRawPointer, _ handler: @escaping Handler) {
        read(fd: fd, into: buffer, count: 8, offset: 0, handler)
    }

    func activate() {
        guard disabled else { return }
        let rc = curing_enable_rings(ring)
        // Without an enabled ring nothing can be served.
        precondition(rc == 0, "io_uring_enable_rings failed: \(rc)")
        disabled = false
    }

    /// Submits what is queued and waits for at least one completion or the
    /// timeout, then runs the handlers of every completion ready.
    func run(timeoutNanoseconds: Int64) {
        let rc = curing_submit_and_wait(ring, timeoutNanoseconds)
        if rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY {
            // Nothing sensible to do but log: the loop retries.
            log.error("io_uring wait failed: \(String(cString: strerror(-rc)))")
        }
        while true {
            let count = Int(curing_peek_cqes(ring, cqes, UInt32(Self.batch)))
            if count == 0 { break }
            for index in 0..<count {
                let cqe = cqes[index]!  // invariant: the kernel filled `count` entries
                let slot = Int(cqe.pointee.user_data)
                let result = cqe.pointee.res
                let handler = handlers[slot]
                handlers[slot] = nil
                freeSlots.append(slot)
                io_uring_cqe_seen(ring, cqe)
                handler?(result)
            }
        }
    }
}

extension Ring {
    /// Sends a gather list; `message` and what it points at must live until
    /// the handler runs.
    func sendMessage(fd: Int32, message: UnsafeMutablePointer<msghdr>, _ handler: @escaping Handler) {
        prepare(handler) { io_uring_prep_sendmsg($0, fd, message, UInt32(MSG_NOSIGNAL)) }
    }
}
