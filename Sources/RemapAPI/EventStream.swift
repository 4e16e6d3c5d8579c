import Foundation
import RemapCore
import Synchronization

/// A Server-Sent Events stream of remap's events for one client. libmicrohttpd
/// pulls from it on the connection's own thread, which may block here.
final class EventStream: ResponseStream, @unchecked Sendable {  // used by one connection thread at a time; `ended` is atomic
    private let control: any ControlPlane
    private var after: UInt64
    private var pending: [UInt8] = Array("retry: 2000\n\n".utf8)
    private let ended = Atomic<Bool>(false)
    /// The stream's place under its listener's cap, given back when it ends.
    private let slot: EventStreamSlots.Slot?
    /// Whether the client closed its connection (checked at every poll, so
    /// a follower that leaves gives its place back at once, not at the next
    /// keep-alive that fails).
    private let clientLeft: @Sendable () -> Bool
    static let pollInterval: useconds_t = 200_000
    static let keepAliveEvery = 15 * 5  // polls

    init(control: any ControlPlane, after: UInt64, slot: EventStreamSlots.Slot?,
         clientLeft: @escaping @Sendable () -> Bool = { false }) {
        self.control = control
        self.after = after
        self.slot = slot
        self.clientLeft = clientLeft
    }

    /// Ends the stream at the next poll (the server is stopping, or the client left).
    func end() {
        ended.store(true, ordering: .relaxed)
        slot?.release()
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
        var polls = 0
        while pending.isEmpty {
            if ended.load(ordering: .relaxed) { return nil }
            if clientLeft() {
                end()
                return nil
            }
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
            polls += 1
            if polls >= Self.keepAliveEvery {
                pending = Array(": keep-alive\n\n".utf8)
                break
            }
            usleep(Self.pollInterval)
        }
        let count = min(maximum, pending.count)
        defer { pending.removeFirst(count) }
        return Array(pending.prefix(count))
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
