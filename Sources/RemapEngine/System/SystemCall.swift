import Glibc
import RemapCore

/// The one place where a failing system call becomes a Swift error: retries
/// EINTR and turns -1 into `RemapError.io` naming what remap was doing.
@discardableResult
public func systemCall<T: FixedWidthInteger>(_ context: @autoclosure () -> String, _ call: () -> T) throws(RemapError) -> T {
    while true {
        let result = call()
        if result != -1 { return result }
        let error = errno
        if error == EINTR { continue }
        throw .io(errno: error, context: "\(context()): \(String(cString: strerror(error)))")
    }
}

/// Starts a detached thread running `body`; `name` shows in `ps -L` and gdb.
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    let rc = tryStartThread(name: name, body)
    // Without a thread the daemon cannot run at all.
    precondition(rc == 0, "pthread_create failed: \(rc)")
}

/// As `startThread`, for a thread the daemon can do without (one serving a
/// single client): returns 0, or pthread_create's error when the system
/// has no thread to give.
func tryStartThread(name: String, _ body: @escaping @Sendable () -> Void) -> Int32 {
    final class Start: @unchecked Sendable {  // handed to exactly one new thread
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
    }
    let start = Unmanaged.passRetained(Start(name: name, body: body))
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { argument in
        let start = Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue()  // invariant: passed below
        pthread_setname_np(pthread_self(), String(start.name.prefix(15)))
        start.body()
        return nil
    }, start.toOpaque())
    guard rc == 0 else {
        start.release()
        return rc
    }
    pthread_detach(thread)
    return 0
}
