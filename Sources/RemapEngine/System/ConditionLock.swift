import CURing
import Glibc

/// A value behind a lock, with a condition to wait on until it is as
/// wanted: what lets a thread sleep until another changes something,
/// instead of polling it. The mutex and condition live on the heap (pthread
/// objects must not move) for the lock's lifetime.
final class ConditionLock<Value>: @unchecked Sendable {  // `value` is only touched with `mutex` held
    private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        // Deadlines are monotonic: a clock step must not shorten or stretch a wait.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Reads or changes the value; waiters look again afterwards.
    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
        return try body(&value)
    }

    /// Waits until `done` (asked under the lock, at once and after every
    /// change) returns a result, or `timeoutNanoseconds` have passed (then
    /// nil).
    func wait<T>(timeoutNanoseconds: Int64, until done: (Value) -> T?) -> T? {
        let deadline = monotonicNanoseconds() + timeoutNanoseconds
        var until = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if let result = done(value) { return result }
            if pthread_cond_timedwait(condition, mutex, &until) == ETIMEDOUT { return done(value) }
        }
    }
}
