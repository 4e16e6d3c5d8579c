import Glibc

/// Waiting without work to do: between polls of an operation, between
/// reconnects to the event stream.
enum Pause {
    /// Sleeps for `milliseconds`, resuming after signals that interrupt it.
    static func milliseconds(_ milliseconds: Int) {
        var request = timespec(tv_sec: milliseconds / 1000, tv_nsec: (milliseconds % 1000) * 1_000_000)
        var remaining = timespec()
        while nanosleep(&request, &remaining) == -1 && errno == EINTR {
            request = remaining
        }
    }
}
