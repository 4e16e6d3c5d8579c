/// A storage pool as the API describes it: the capacity its suppliers give,
/// how much of it volumes have allocated, and how much they could ask for.
struct Pool: Decodable, Equatable, Sendable {
    var name: String
    var chunkSizeBytes: Int
    /// Always `allocatedBytes + freeBytes`.
    var capacityBytes: Int
    var allocatedBytes: Int
    var freeBytes: Int
    /// The sum of the sizes of the pool's volumes, which may exceed its
    /// capacity: volumes are thin.
    var provisionedBytes: Int
    /// `provisionedBytes / capacityBytes`; 0 for an empty pool.
    var overcommitRatio: Double
    var volumeCount: Int
    var suppliers: [Supplier]
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
