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
