import Glibc

/// Asynchronous I/O for the engine thread: io_uring (`Ring`) or, where
/// io_uring is unavailable, a few threads doing blocking calls
/// (`ThreadPoolQueue`).
///
/// Every operation completes later, never inside the call that submits it:
/// its handler runs on the engine thread, from `run`, with the raw result
/// (bytes, a file descriptor, or -errno). A buffer passed to an operation
/// must stay alive until its handler runs: callers keep it alive by
/// capturing its owner in the handler.
protocol IOQueue: AnyObject {
    typealias Handler = (Int32) -> Void

    /// "io_uring" or "threads", for `GET /v1/version`.
    var name: String { get }
    func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler)
    func write(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler)
    /// fallocate(2) with FALLOC_FL_* `mode`.
    func allocateSpace(fd: Int32, mode: Int32, offset: UInt64, length: UInt64, _ handler: @escaping Handler)
    func receive(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, _ handler: @escaping Handler)
    /// Sends a gather list; `message` and what it points at must live until the handler runs.
    func sendMessage(fd: Int32, message: UnsafeMutablePointer<msghdr>, _ handler: @escaping Handler)
    func accept(fd: Int32, _ handler: @escaping Handler)
    /// Reads the 8-byte counter of an eventfd once it is signalled.
    func readEvent(fd: Int32, into buffer: UnsafeMutableRawPointer, _ handler: @escaping Handler)
    /// Waits up to the timeout for completions and runs their handlers.
    func run(timeoutNanoseconds: Int64)
    /// Called once on the engine thread before the first `run`.
    func activate()
}

extension IOQueue {
    /// Reads exactly `count` bytes, resubmitting after short reads; the
    /// handler gets `count` or -errno (-EIO for an unexpected end of file).
    func readFully(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        read(fd: fd, into: buffer, count: count, offset: offset) { [unowned self] result in
            if result < 0 || Int(result) == count { return handler(result) }
            if result == 0 { return handler(-EIO) }
            let done = Int(result)
            readFully(fd: fd, into: buffer + done, count: count - done, offset: offset + UInt64(done)) {
                handler($0 < 0 ? $0 : Int32(count))
            }
        }
    }

    /// Writes exactly `count` bytes, resubmitting after short writes.
    func writeFully(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        write(fd: fd, from: buffer, count: count, offset: offset) { [unowned self] result in
            if result < 0 || Int(result) == count { return handler(result) }
            if result == 0 { return handler(-EIO) }
            let done = Int(result)
            writeFully(fd: fd, from: buffer + done, count: count - done, offset: offset + UInt64(done)) {
                handler($0 < 0 ? $0 : Int32(count))
            }
        }
    }
}
