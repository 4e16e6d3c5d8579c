import CURing
import Glibc
import RemapCore
import RemapLog
import Synchronization

/// The last events, numbered, for pollers (`since`) and streams (SSE).
/// Written by the engine thread, read by the API's threads.
public final class EventLog: Sendable {
    public static let capacity = 1000
    private let state: Mutex<(next: UInt64, events: [Event])>
    /// Called after each new event (`watch`), by number.
    private let watchers = Mutex<(next: UInt64, wake: [UInt64: @Sendable () -> Void])>((0, [:]))

    /// Numbers start at the start time in milliseconds, so they keep
    /// growing across restarts and a client resuming with an old
    /// `Last-Event-ID` misses nothing new.
    public init() {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        state = Mutex((UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec / 1_000_000), []))
    }

    func record(_ type: Event.Kind, pool: String? = nil, volume: String? = nil, reservation: String? = nil,
                offsetBytes: UInt64? = nil, percent: Int? = nil, detail: String) {
        state.withLock { state in
            let event = Event(seq: state.next, time: utcTimestamp(unixSeconds: Int64(time(nil))), type: type, pool: pool,
                              volume: volume, reservation: reservation, offsetBytes: offsetBytes, percent: percent,
                              detail: detail)
            state.next += 1
            state.events.append(event)
            if state.events.count > Self.capacity { state.events.removeFirst(state.events.count - Self.capacity) }
        }
        log.log(level: type.logLevel, "event \(type.rawValue): \(detail)")
        for wake in watchers.withLock({ Array($0.wake.values) }) { wake() }
    }

    /// Calls `wake` after every event recorded from now on, on the thread
    /// that records it (the engine's: `wake` must only signal), until the
    /// function returned is called.
    public func watch(_ wake: @escaping @Sendable () -> Void) -> @Sendable () -> Void {
        let number = watchers.withLock { watchers in
            defer { watchers.next += 1 }
            watchers.wake[watchers.next] = wake
            return watchers.next
        }
        return { [self] in _ = watchers.withLock { $0.wake.removeValue(forKey: number) } }
    }

    /// Events after `seq`, oldest first, and the number of the newest event.
    public func events(after seq: UInt64) -> (events: [Event], last: UInt64) {
        state.withLock { state in (state.events.filter { $0.seq > seq }, state.next - 1) }
    }
}

extension Engine {
    /// Calls `wake` after each new event (see `EventLog.watch`): event
    /// streams wait on it.
    public func watchEvents(_ wake: @escaping @Sendable () -> Void) -> @Sendable () -> Void {
        events.watch(wake)
    }
}

extension Event.Kind {
    /// How much the event's log line matters: a pool that fails is an
    /// error, one running out of space a warning, anything else a change of state.
    fileprivate var logLevel: Logger.Level {
        switch self {
        case .poolDegraded, .poolOffline: .error
        case .poolLowSpace, .poolNoSpace: .warning
        default: .notice
        }
    }
}
