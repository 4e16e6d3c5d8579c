import Logging
import Synchronization

/// Lets one kind of message through once per interval and counts the
/// rest, so a client repeating itself (or an attack) cannot flood the log.
/// `kind` must be a fixed text (a format string), never a client's.
public final class LogThrottle: Sendable {
    private let interval: Duration
    private let state = Mutex<[String: (last: ContinuousClock.Instant, suppressed: Int)]>([:])

    public init(interval: Duration = .seconds(60)) {
        self.interval = interval
    }

    /// Logs `message` at `level` unless a message of `kind` was logged
    /// within the interval; the next one logged says how many were left out.
    public func log(_ level: Logger.Level, _ kind: String, _ message: @autoclosure () -> String) {
        guard RemapLog.log.logLevel <= level else { return }
        let now = ContinuousClock.now
        let suppressed: Int? = state.withLock { state in
            if let entry = state[kind], now - entry.last < interval {
                state[kind]?.suppressed += 1
                return nil
            }
            let suppressed = state[kind]?.suppressed ?? 0
            state[kind] = (now, 0)
            return suppressed
        }
        guard let suppressed else { return }
        let more = suppressed > 0 ? " (\(suppressed) more like this since the last such line)" : ""
        RemapLog.log.log(level: level, "\(message())\(more)")
    }
}
