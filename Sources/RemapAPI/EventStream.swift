import Dispatch
import Foundation
import RemapCore
import Synchronization

/// A Server-Sent Events stream of remap's events for one client. libmicrohttpd
/// pulls from it on the connection's own thread, which sleeps here until an
/// event is recorded (the control plane wakes it), the stream ends, or a
/// keep-alive is due.
final class EventStream: ResponseStream, @unchecked Sendable {  // used by one connection thread at a time; `ended` is atomic
    private let control: any ControlPlane
    private var after: UInt64
    private var pending: [UInt8] = Array("retry: 2000\n\n".utf8)
    private let ended = Atomic<Bool>(false)
    /// The stream's place under its listener's cap, given back when it ends.
    private let slot: EventStreamSlots.Slot?
    /// Whether the client closed its connection. Nothing wakes the stream
    /// when it does (its socket is libmicrohttpd's), so it is asked every
    /// `clientCheckInterval` while the stream waits: a follower that leaves
    /// gives its place back within that, not at the next keep-alive.
    private let clientLeft: @Sendable () -> Bool
    /// Signalled for each new event and when the stream ends.
    private let wakeUp = DispatchSemaphore(value: 0)
    private let stopWatching: @Sendable () -> Void
    static let clientCheckInterval: Int64 = 1_000_000_000
    static let keepAliveInterval: Int64 = 15_000_000_000

    init(control: any ControlPlane, after: UInt64, slot: EventStreamSlots.Slot?,
         clientLeft: @escaping @Sendable () -> Bool = { false }) {
        self.control = control
        self.after = after
        self.slot = slot
        self.clientLeft = clientLeft
        stopWatching = control.watchEvents { [wakeUp] in wakeUp.signal() }
    }

    /// Ends the stream: a read waiting returns at once (the server is
    /// stopping, or the client left).
    func end() {
        guard !ended.exchange(true, ordering: .relaxed) else { return }
        stopWatching()
        slot?.release()
        wakeUp.signal()
    }

    var isEnded: Bool { ended.load(ordering: .relaxed) }

    var length: UInt64? { nil }

    func read(into buffer: UnsafeMutableRawPointer, maximum: Int) -> Int? {
        guard let bytes = read(maximum: maximum), !bytes.isEmpty else { return nil }
        bytes.withUnsafeBytes { raw in
            if let base = raw.baseAddress { buffer.copyMemory(from: base, byteCount: raw.count) }
        }
        return bytes.count
    }

    /// Up to `maximum` bytes of stream, waiting for events; nil ends it.
    func read(maximum: Int) -> [UInt8]? {
        let keepAliveDue = Self.now() + Self.keepAliveInterval
        while pending.isEmpty {
            if ended.load(ordering: .relaxed) { return nil }
            if clientLeft() {
                end()
                return nil
            }
            // An event recorded after this look signals `wakeUp`: the wait
            // below returns at once for it.
            let (events, _) = control.events(after: after)
            if !events.isEmpty {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                for event in events {
                    guard let data = try? encoder.encode(event) else { continue }
                    pending += Array("id: \(event.seq)\nevent: \(event.type.rawValue)\ndata: ".utf8) + Array(data) + Array("\n\n".utf8)
                    after = event.seq
                }
                break
            }
            let now = Self.now()
            if now >= keepAliveDue {
                pending = Array(": keep-alive\n\n".utf8)
                break
            }
            _ = wakeUp.wait(timeout: .now() + .nanoseconds(Int(min(Self.clientCheckInterval, keepAliveDue - now))))
        }
        let count = min(maximum, pending.count)
        defer { pending.removeFirst(count) }
        return Array(pending.prefix(count))
    }

    private static func now() -> Int64 {
        Int64(DispatchTime.now().uptimeNanoseconds)
    }
}

/// The cap on a listener's event streams: a follower over it is answered
/// 503 instead of holding one more connection thread for as long as it
/// likes.
final class EventStreamSlots: Sendable {
    let limit: Int
    private let used = Mutex(0)

    init(limit: Int) { self.limit = limit }

    /// A place for one more stream, or nil when all are taken.
    func take() -> Slot? {
        let taken = used.withLock { used in
            guard used < limit else { return false }
            used += 1
            return true
        }
        return taken ? Slot(self) : nil
    }

    /// One stream's place; releasing it twice gives it back once.
    final class Slot: Sendable {
        private let slots: EventStreamSlots
        private let released = Atomic<Bool>(false)

        fileprivate init(_ slots: EventStreamSlots) { self.slots = slots }

        func release() {
            guard !released.exchange(true, ordering: .relaxed) else { return }
            slots.used.withLock { $0 -= 1 }
        }
    }
}

extension ControlPlane {
    /// Never wakes: a stream over such a control plane sees new events at
    /// its next keep-alive or client check.
    public func watchEvents(_ wake: @escaping @Sendable () -> Void) -> @Sendable () -> Void { {} }
}
