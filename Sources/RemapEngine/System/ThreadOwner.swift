import Glibc
import Synchronization

/// Which thread owns a piece of single-threaded state: the thread that made
/// it until one `claim`s it (the engine thread, at start). The checks cost
/// nothing in release builds; in debug builds they are a relaxed atomic load
/// and `pthread_self`, so every engine-thread-only method can afford one.
final class ThreadOwner: Sendable {
    /// The owner's pthread_t; 0 until claimed (the creating thread sets up).
    private let thread = Atomic<UInt>(0)

    /// The calling thread owns the state from now on.
    func claim() {
        thread.store(UInt(pthread_self()), ordering: .releasing)
    }

    /// Whether the calling thread is the owner (false before any claim).
    var isCurrent: Bool {
        thread.load(ordering: .acquiring) == UInt(pthread_self())
    }

    /// Traps in debug builds unless the calling thread owns the state, or
    /// none has claimed it yet.
    @inline(__always)
    func assertOwner(_ function: StaticString = #function) {
        #if DEBUG
        let owner = thread.load(ordering: .relaxed)
        precondition(owner == 0 || owner == UInt(pthread_self()), "\(function) runs only on the engine thread")
        #endif
    }

    /// Traps in debug builds when the owner itself would block on what only
    /// it can do (in release builds that is a silent deadlock).
    @inline(__always)
    func assertNotOwner(_ what: @autoclosure () -> String) {
        #if DEBUG
        precondition(!isCurrent, "\(what()) would wait for itself for ever")
        #endif
    }
}
