import RemapWire
/// A storage pool as the API describes it: the capacity its suppliers give,
/// how much of it volumes have allocated, and how much they could ask for.
struct Pool: Decodable, Equatable, Sendable {
    var name: String
    var chunkSizeBytes: Int
    /// Always `allocatedBytes + reservedBytes + freeBytes`.
    var capacityBytes: Int
    var allocatedBytes: Int
    /// The unused part of live reservations; absent from daemons that
    /// predate reservations.
    var reservedBytes: Int?
    var freeBytes: Int
    /// The sum of the sizes of the pool's volumes, which may exceed its
    /// capacity: volumes are thin.
    var provisionedBytes: Int
    /// `provisionedBytes / capacityBytes`; 0 for an empty pool.
    var overcommitRatio: Double
    var volumeCount: Int
    var suppliers: [Supplier]
    /// What a write that finds no space does; absent from older daemons.
    var onNoSpace: OnNoSpace?
    /// Percentages of capacity committed (allocated + reserved) whose
    /// upward crossing raises a `pool.low-space` event.
    var lowSpaceThresholds: [Int]?
    /// `online`, `degraded` (a supplier failed: reads only) or `offline` (a
    /// supplier was missing at start); absent from older daemons.
    var state: String?
    /// What failed, when the pool is not online.
    var stateReason: String?
}

/// What a pool does with a write that finds no space: fail it at once with
/// ENOSPC, or hold it up to some seconds for space to come back.
///
/// On the wire `"error"` or `{"queueSeconds": S}`; on the command line and
/// in tables `error` or `queue:S`.
enum OnNoSpace: Codable, Equatable, Sendable, CustomStringConvertible {
    case error
    case queue(seconds: Int)
    /// A setting newer than remapctl, kept as sent.
    case other(String)

    private enum CodingKeys: String, CodingKey {
        case queueSeconds
    }

    init(from decoder: any Decoder) throws {
        if let text = try? decoder.singleValueContainer().decode(String.self) {
            self = text == "error" ? .error : .other(text)
            return
        }
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self = .queue(seconds: try container.decode(Int.self, forKey: .queueSeconds))
    }

    func encode(to encoder: any Encoder) throws {
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

    var description: String {
        switch self {
        case .error: "error"
        case .queue(let seconds): "queue:\(seconds)"
        case .other(let text): text
        }
    }

    /// The setting in words, for `pool show`.
    var explanation: String {
        switch self {
        case .error: "error (fail writes with ENOSPC at once)"
        case .queue(let seconds): "queue:\(seconds) (writes wait up to \(Seconds(seconds)) for space, then ENOSPC)"
        case .other(let text): text
        }
    }

    /// Why an `--on-no-space` value was refused.
    struct ParseError: Error, CustomStringConvertible {
        let description: String
    }

    /// Parses `error`, or `queue:SECONDS` where SECONDS may carry a unit
    /// (`queue:30`, `queue:2m`). The range (1–300 s) is remapd's to check.
    init(parsing text: String) throws(ParseError) {
        let trimmed = text.trimmed.lowercased()
        if trimmed == "error" {
            self = .error
            return
        }
        guard trimmed.hasPrefix("queue:") else {
            throw ParseError(description: "use 'error' or 'queue:SECONDS' (e.g. queue:30)")
        }
        do throws(Seconds.ParseError) {
            self = .queue(seconds: try Seconds(parsing: String(trimmed.dropFirst("queue:".count))).value)
        } catch {
            throw ParseError(description: "queue:SECONDS: \(error)")
        }
    }
}

/// The body of `PATCH /v1/pools/{name}`: the settings to change.
struct PoolUpdate: Encodable, Sendable {
    var onNoSpace: OnNoSpace?
    var lowSpaceThresholds: [Int]?
}

/// The body of `PATCH /v1/pools/{name}/suppliers/{id}`: a file supplier's
/// new, larger size.
struct SupplierResize: Encodable, Sendable {
    var sizeBytes: Int
}

/// A backing file or device that gives a pool its capacity.
struct Supplier: Decodable, Equatable, Sendable {
    var id: String
    /// What kind of backing store it is: `file` or `block`.
    var kind: String
    /// The absolute path of the file or device on the daemon's host.
    var path: String
    var sizeBytes: Int
    /// Whether remapd allocated the file's blocks up front; block devices
    /// may leave it out.
    var preallocated: Bool?
    /// `ok`, `failed` or `missing`; absent from older daemons.
    var state: String?
    /// What failed.
    var error: String?
}

/// The body of `GET /v1/pools`.
struct PoolList: Decodable, Sendable {
    var pools: [Pool]
}

/// The body of `POST /v1/pools`.
struct PoolSpec: Encodable, Sendable {
    var name: String
    /// The server picks 64 KiB when omitted.
    var chunkSizeBytes: Int?
    var suppliers: [SupplierSpec]
}

/// A supplier to add to a pool: the body of `POST /v1/pools/{name}/suppliers`
/// and an element of ``PoolSpec/suppliers``.
enum SupplierSpec: Encodable, Equatable, Sendable {
    /// A file remapd creates (it must not exist yet) under its supplier
    /// directory.
    case file(path: String, sizeBytes: Int, preallocate: Bool)
    /// An existing block device, used whole.
    case block(path: String)

    private enum CodingKeys: String, CodingKey {
        case kind, path, sizeBytes, preallocate
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .file(let path, let sizeBytes, let preallocate):
            try container.encode("file", forKey: .kind)
            try container.encode(path, forKey: .path)
            try container.encode(sizeBytes, forKey: .sizeBytes)
            try container.encode(preallocate, forKey: .preallocate)
        case .block(let path):
            try container.encode("block", forKey: .kind)
            try container.encode(path, forKey: .path)
        }
    }
}
