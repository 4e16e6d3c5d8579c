/// A storage pool as the API describes it: the capacity its suppliers give,
/// how much of it volumes have allocated, and how much they could ask for.
public struct Pool: Decodable, Equatable, Sendable {
    public var name: String
    public var chunkSizeBytes: Int
    /// Always `allocatedBytes + reservedBytes + freeBytes`.
    public var capacityBytes: Int
    public var allocatedBytes: Int
    /// The unused part of live reservations; absent from daemons that
    /// predate reservations.
    public var reservedBytes: Int?
    public var freeBytes: Int
    /// The sum of the sizes of the pool's volumes, which may exceed its
    /// capacity: volumes are thin.
    public var provisionedBytes: Int
    /// `provisionedBytes / capacityBytes`; 0 for an empty pool.
    public var overcommitRatio: Double
    public var volumeCount: Int
    public var suppliers: [Supplier]
    /// What a write that finds no space does; absent from older daemons.
    public var onNoSpace: OnNoSpace?
    /// Percentages of capacity committed (allocated + reserved) whose
    /// upward crossing raises a `pool.low-space` event.
    public var lowSpaceThresholds: [Int]?
    /// `online`, `degraded` (a supplier failed: reads only) or `offline` (a
    /// supplier was missing at start); absent from older daemons.
    public var state: String?
    /// What failed, when the pool is not online.
    public var stateReason: String?
}

/// A backing file or device that gives a pool its capacity.
public struct Supplier: Decodable, Equatable, Sendable {
    public var id: String
    /// What kind of backing store it is: `file` or `block`.
    public var kind: String
    /// The absolute path of the file or device on the daemon's host.
    public var path: String
    public var sizeBytes: Int
    /// Whether remapd allocated the file's blocks up front; block devices
    /// may leave it out.
    public var preallocated: Bool?
    /// `ok`, `failed` or `missing`; absent from older daemons.
    public var state: String?
    /// What failed.
    public var error: String?
}

/// What a pool does with a write that finds no space: fail it at once with
/// ENOSPC, or hold it up to some seconds for space to come back.
///
/// On the wire `"error"` or `{"queueSeconds": S}`; in tables `error` or
/// `queue:S`.
public enum OnNoSpace: Codable, Equatable, Sendable, CustomStringConvertible {
    case error
    case queue(seconds: Int)
    /// A setting newer than this client, kept as sent.
    case other(String)

    private enum CodingKeys: String, CodingKey {
        case queueSeconds
    }

    public init(from decoder: any Decoder) throws {
        if let text = try? decoder.singleValueContainer().decode(String.self) {
            self = text == "error" ? .error : .other(text)
            return
        }
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self = .queue(seconds: try container.decode(Int.self, forKey: .queueSeconds))
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .error:
            var container = encoder.singleValueContainer()
            try container.encode("error")
        case .queue(let seconds):
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(seconds, forKey: .queueSeconds)
        case .other(let text):
            var container = encoder.singleValueContainer()
            try container.encode(text)
        }
    }

    public var description: String {
        switch self {
        case .error: "error"
        case .queue(let seconds): "queue:\(seconds)"
        case .other(let text): text
        }
    }
}
