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
    static let pollInterval: useconds_t = 200_000
    static let keepAliveEvery = 15 * 5  // polls

    init(control: any ControlPlane, after: UInt64) {
        self.control = control
        self.after = after
    }

    /// Ends the stream at the next poll (the server is stopping, or the client left).
    func end() { ended.store(true, ordering: .relaxed) }

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
