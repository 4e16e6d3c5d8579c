import CURing
import Dispatch
import Glibc
import RemapCore
import Synchronization

/// The portable I/O queue, for kernels or sandboxes without io_uring:
/// supplier I/O runs as blocking calls on a few worker threads; sockets are
/// non-blocking and watched with epoll on the engine thread.
final class ThreadPoolQueue: IOQueue {
    let name = "threads"

    /// A blocking file operation for a worker. Pointers are only touched by
    /// the worker until it reports completion; their owners are kept alive
    /// by the handler in `handlers`, which only the engine thread touches.
    private struct FileJob: @unchecked Sendable {
        enum Kind { case read, write, allocate }
        var slot: Int
        var kind: Kind
        var fd: Int32
        var buffer: UnsafeMutableRawPointer?
        var count: Int
        var offset: UInt64
        var mode: Int32 = 0
    }

    private enum SocketOperation {
        case receive(UnsafeMutableRawPointer, Int)
        case sendMessage(UnsafeMutablePointer<msghdr>)
        case accept
        case readEvent(UnsafeMutableRawPointer)
    }

    /// What the worker threads share with the engine thread.
    private final class Workers: Sendable {
        let jobs = Mutex<[FileJob]>([])
        let jobsReady = DispatchSemaphore(value: 0)
        let finished = Mutex<[(slot: Int, result: Int32)]>([])
        /// Signalled when `finished` has entries.
        let completionFD: Int32

        init(completionFD: Int32) { self.completionFD = completionFD }

        func work() {
            while true {
                jobsReady.wait()
                guard let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
                var result: Int
                repeat {
                    switch job.kind {
                    case .read: result = pread(job.fd, job.buffer, job.count, off_t(job.offset))
                    case .write: result = pwrite(job.fd, job.buffer, job.count, off_t(job.offset))
                    case .allocate: result = Int(fallocate(job.fd, job.mode, off_t(job.offset), off_t(job.count)))
                    }
                } while result < 0 && errno == EINTR
                let outcome = result < 0 ? -errno : Int32(clamping: result)
                finished.withLock { $0.append((job.slot, outcome)) }
                var one: UInt64 = 1
                _ = Glibc.write(completionFD, &one, 8)
            }
        }
    }

    private var handlers: [Handler?] = []
    private var freeSlots: [Int] = []
    private let workers: Workers
    private let epollFD: Int32
    private let completionFD: Int32
    private var readers: [Int32: (slot: Int, operation: SocketOperation)] = [:]
    private var writers: [Int32: (slot: Int, operation: SocketOperation)] = [:]
    private var watched: Set<Int32> = []
    private static let completionMarker: UInt64 = .max

    init(workers: Int = 4) throws(RemapError) {
        let epoll = try systemCall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        let completion = try systemCall("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = Self.completionMarker
        try systemCall("epoll_ctl") { epoll_ctl(epoll, EPOLL_CTL_ADD, completion, &event) }
        epollFD = epoll
        completionFD = completion
        let pool = Workers(completionFD: completion)
        self.workers = pool
        for index in 0..<workers {
            startThread(name: "remap-io-\(index)") { pool.work() }
        }
    }

    private func register(_ handler: @escaping Handler) -> Int {
        if let slot = freeSlots.popLast() {
            handlers[slot] = handler
            return slot
        }
        handlers.append(handler)
        return handlers.count - 1
    }

    private func complete(_ slot: Int, _ result: Int32) {
        let handler = handlers[slot]
        handlers[slot] = nil
        freeSlots.append(slot)
        handler?(result)
    }

    // MARK: - Files: worker threads

    private func enqueue(_ job: FileJob) {
        workers.jobs.withLock { $0.append(job) }
        workers.jobsReady.signal()
    }

    func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        enqueue(FileJob(slot: register(handler), kind: .read, fd: fd, buffer: buffer, count: count, offset: offset))
    }

    func write(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        enqueue(FileJob(slot: register(handler), kind: .write, fd: fd, buffer: UnsafeMutableRawPointer(mutating: buffer),
                        count: count, offset: offset))
    }

    func allocateSpace(fd: Int32, mode: Int32, offset: UInt64, length: UInt64, _ handler: @escaping Handler) {
        enqueue(FileJob(slot: register(handler), kind: .allocate, fd: fd, buffer: nil, count: Int(length), offset: offset, mode: mode))
    }

    // MARK: - Sockets: epoll on the engine thread

    func receive(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, _ handler: @escaping Handler) {
        readers[fd] = (register(handler), .receive(buffer, count))
        watch(fd)
    }

    func sendMessage(fd: Int32, message: UnsafeMutablePointer<msghdr>, _ handler: @escaping Handler) {
        writers[fd] = (register(handler), .sendMessage(message))
        watch(fd)
    }

    func accept(fd: Int32, _ handler: @escaping Handler) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        readers[fd] = (register(handler), .accept)
        watch(fd)
    }

    func readEvent(fd: Int32, into buffer: UnsafeMutableRawPointer, _ handler: @escaping Handler) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        readers[fd] = (register(handler), .readEvent(buffer))
        watch(fd)
    }

    /// (Re)arms a one-shot epoll watch for what `fd` waits for.
    private func watch(_ fd: Int32) {
        var event = epoll_event()
        event.events = UInt32(EPOLLONESHOT.rawValue) | (readers[fd] != nil ? EPOLLIN.rawValue | EPOLLRDHUP.rawValue : 0)
            | (writers[fd] != nil ? EPOLLOUT.rawValue : 0)
        event.data.u64 = UInt64(fd)
        // A closed descriptor leaves the epoll set by itself, and its number
        // may come back: fall back between MOD and ADD.
        if epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event) != 0 {
            if epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) != 0 {
                let error = errno
                if let reader = readers.removeValue(forKey: fd) { complete(reader.slot, -error) }
                if let writer = writers.removeValue(forKey: fd) { complete(writer.slot, -error) }
            }
        }
    }

    /// Tries a socket operation without blocking; nil means "not yet".
    private func attempt(_ fd: Int32, _ operation: SocketOperation) -> Int32? {
        let result: Int
        switch operation {
        case .receive(let buffer, let count): result = recv(fd, buffer, count, Int32(MSG_DONTWAIT))
        case .sendMessage(let message): result = sendmsg(fd, message, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
        case .accept: result = Int(accept4(fd, __SOCKADDR_ARG(__sockaddr__: nil), nil, Int32(SOCK_CLOEXEC.rawValue)))
        case .readEvent(let buffer): result = Glibc.read(fd, buffer, 8)
        }
        if result >= 0 { return Int32(clamping: result) }
        let error = errno
        if error == EAGAIN || error == EWOULDBLOCK || error == EINTR { return nil }
        return -error
    }

    func activate() {}

    func run(timeoutNanoseconds: Int64) {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        let milliseconds = Int32(clamping: max(1, timeoutNanoseconds / 1_000_000))
        let count = epoll_wait(epollFD, &events, Int32(events.count), milliseconds)
        guard count > 0 else { return }
        for event in events.prefix(Int(count)) {
            if event.data.u64 == Self.completionMarker {
                var counter: UInt64 = 0
                _ = Glibc.read(completionFD, &counter, 8)
                let done: [(slot: Int, result: Int32)] = workers.finished.withLock { finished in
                    let taken = finished
                    finished.removeAll()
                    return taken
                }
                for entry in done { complete(entry.slot, entry.result) }
                continue
            }
            let fd = Int32(truncatingIfNeeded: event.data.u64)
            if let reader = readers[fd], let result = attempt(fd, reader.operation) {
                readers[fd] = nil
                complete(reader.slot, result)
            }
            if let writer = writers[fd], let result = attempt(fd, writer.operation) {
                writers[fd] = nil
                complete(writer.slot, result)
            }
            if readers[fd] != nil || writers[fd] != nil { watch(fd) }
        }
    }
}
