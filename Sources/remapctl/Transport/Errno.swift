import Glibc

/// A POSIX error number, as set by a failed system call.
///
/// This is the one place where `errno` turns into a Swift error: every
/// system call in remapctl goes through ``valueOrErrno(retryOnInterrupt:_:)``.
struct Errno: Error, Equatable, CustomStringConvertible {
    /// The raw `errno` value.
    let rawValue: CInt

    init(rawValue: CInt) {
        self.rawValue = rawValue
    }

    /// The value `errno` holds right now.
    static var current: Errno { Errno(rawValue: errno) }

    static let interrupted = Errno(rawValue: EINTR)
    static let wouldBlock = Errno(rawValue: EAGAIN)
    static let inProgress = Errno(rawValue: EINPROGRESS)
    static let noSuchFileOrDirectory = Errno(rawValue: ENOENT)
    static let fileNameTooLong = Errno(rawValue: ENAMETOOLONG)
    static let timedOut = Errno(rawValue: ETIMEDOUT)
    static let fileTooLarge = Errno(rawValue: EFBIG)
    static let connectionReset = Errno(rawValue: ECONNRESET)
    static let fileExists = Errno(rawValue: EEXIST)

    /// The C library's message for this error, e.g. "Connection refused".
    var description: String {
        guard let message = strerror(rawValue) else { return "error \(rawValue)" }
        return String(cString: message)
    }
}

/// Runs a system call that returns -1 and sets `errno` on failure, turning
/// that failure into a thrown ``Errno``.
///
/// With `retryOnInterrupt` (the default) a call interrupted by a signal
/// (`EINTR`) is simply made again.
func valueOrErrno<Result: BinaryInteger>(
    retryOnInterrupt: Bool = true,
    _ call: () -> Result
) throws(Errno) -> Result {
    while true {
        let result = call()
        if result != -1 { return result }
        let error = Errno.current
        if retryOnInterrupt && error == .interrupted { continue }
        throw error
    }
}
