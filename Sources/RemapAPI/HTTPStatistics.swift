import RemapCore
import Synchronization

/// REST requests counted by route template, method and status, with a
/// latency histogram per route. Shared by libmicrohttpd's threads.
final class HTTPStatistics: Sendable {
    struct Key: Hashable, Comparable {
        var route: String
        var method: String
        var status: Int

        static func < (a: Key, b: Key) -> Bool {
            (a.route, a.method, a.status) < (b.route, b.method, b.status)
        }
    }

    struct Snapshot {
        var requests: [Key: UInt64]
        var latency: [String: Histogram]
    }

    private let state = Mutex(Snapshot(requests: [:], latency: [:]))

    /// The methods counted under their own name; any other (a client may
    /// send any token) is counted as `other`, so clients cannot add series.
    static let methods: Set<String> = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]

    func record(route: String, method: String, status: Int, seconds: Double) {
        let method = Self.methods.contains(method) ? method : "other"
        state.withLock {
            $0.requests[Key(route: route, method: method, status: status), default: 0] += 1
            $0.latency[route, default: Histogram()].observe(seconds)
        }
    }

    func snapshot() -> Snapshot { state.withLock { $0 } }
}
