/// A storage pool as the API describes it: the capacity its suppliers give
/// and how much of it volumes have allocated, in bytes.
struct Pool: Decodable, Equatable, Sendable {
    var name: String
    var chunkSizeBytes: Int
    var capacityBytes: Int
    var allocatedBytes: Int
    var freeBytes: Int
    var suppliers: [Supplier]
}

/// A backing file or device that gives a pool its capacity.
struct Supplier: Decodable, Equatable, Sendable {
    var id: String
    /// What kind of backing store it is, e.g. `file`.
    var kind: String
    /// The absolute path of the file or device.
    var path: String
    var sizeBytes: Int
}

/// The body of `GET /v1/pools`.
struct PoolList: Decodable, Sendable {
    var pools: [Pool]
}
