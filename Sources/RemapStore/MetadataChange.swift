import RemapCore

/// One change to persistent metadata. The engine produces them in the order
/// they happened; the store applies a batch of them as one transaction.
public enum MetadataChange: Sendable, Equatable {
    case createPool(name: String, chunkSize: UInt64)
    /// Removes an empty pool and its suppliers.
    case deletePool(name: String)
    case addSupplier(pool: String, ordinal: Int, supplier: Supplier)
    case createVolume(StoredVolume)
    /// Removes the volume and all its mappings.
    case deleteVolume(key: Int64)
    case resizeVolume(key: Int64, sizeBytes: UInt64)
    /// Replaces the volume's labels.
    case setLabels(volume: Int64, labels: [String: String])
    case map(volume: Int64, virtualChunk: UInt64, physicalChunk: UInt64)
    case unmap(volume: Int64, virtualChunk: UInt64)
    /// A freed chunk that may still hold old data: zeroed before reuse, also
    /// after a crash.
    case markDirty(pool: String, physicalChunk: UInt64)
    case clearDirty(pool: String, physicalChunk: UInt64)
}

/// A volume as stored.
public struct StoredVolume: Sendable, Equatable {
    public var key: Int64
    public var id: String
    public var name: String
    public var pool: String
    public var sizeBytes: UInt64
    public var createdAt: String
    public var labels: [String: String]

    public init(key: Int64, id: String, name: String, pool: String, sizeBytes: UInt64, createdAt: String,
                labels: [String: String] = [:]) {
        self.key = key
        self.id = id
        self.name = name
        self.pool = pool
        self.sizeBytes = sizeBytes
        self.createdAt = createdAt
        self.labels = labels
    }
}

/// A pool as stored.
public struct StoredPool: Sendable, Equatable {
    public var name: String
    public var chunkSize: UInt64
    public var suppliers: [Supplier]
}
