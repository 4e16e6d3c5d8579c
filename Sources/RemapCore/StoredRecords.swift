// What the metadata store holds, as plain values: the store reads and
// writes them, the engine loads its state from them, and the offline
// checker (`MetadataCheck`) verifies them without a store.

/// A snapshot as stored.
public struct StoredSnapshot: Sendable, Equatable {
    public var key: Int64
    public var id: String
    public var name: String
    public var volumeKey: Int64
    public var volumeName: String
    public var pool: String
    public var layer: Int64
    public var sizeBytes: UInt64
    public var createdAt: String

    public init(key: Int64, id: String, name: String, volumeKey: Int64, volumeName: String, pool: String, layer: Int64,
                sizeBytes: UInt64, createdAt: String) {
        self.key = key
        self.id = id
        self.name = name
        self.volumeKey = volumeKey
        self.volumeName = volumeName
        self.pool = pool
        self.layer = layer
        self.sizeBytes = sizeBytes
        self.createdAt = createdAt
    }
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
    /// The volume's top mapping layer (its key until its first snapshot).
    public var layer: Int64
    /// For a clone: the snapshot it was made from.
    public var originSnapshot: String?

    public init(key: Int64, id: String, name: String, pool: String, sizeBytes: UInt64, createdAt: String,
                labels: [String: String] = [:], layer: Int64? = nil, originSnapshot: String? = nil) {
        self.layer = layer ?? key
        self.originSnapshot = originSnapshot
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
    public var segments: [StoredSegment] = []
    public var queueSeconds: Int = 0
    public var thresholds: [Int] = [80, 90, 95]

    public init(name: String, chunkSize: UInt64, suppliers: [Supplier], segments: [StoredSegment] = [],
                queueSeconds: Int = 0, thresholds: [Int] = [80, 90, 95]) {
        self.name = name
        self.chunkSize = chunkSize
        self.suppliers = suppliers
        self.segments = segments
        self.queueSeconds = queueSeconds
        self.thresholds = thresholds
    }
}

/// A run of a pool's physical chunks on one supplier.
public struct StoredSegment: Sendable, Equatable {
    public var firstChunk: UInt64
    public var supplierID: String
    public var supplierOffset: UInt64
    public var chunks: UInt64

    public init(firstChunk: UInt64, supplierID: String, supplierOffset: UInt64, chunks: UInt64) {
        self.firstChunk = firstChunk
        self.supplierID = supplierID
        self.supplierOffset = supplierOffset
        self.chunks = chunks
    }
}

/// A reservation as stored.
public struct StoredReservation: Sendable, Equatable {
    public var id: String
    public var volume: Int64
    public var name: String?
    /// nil for pooled, else the range's first chunk.
    public var firstChunk: UInt64?
    public var chunkCount: UInt64
    /// Pooled: chunks not drawn yet. Range: derived from unwritten mappings.
    public var remaining: UInt64
    public var role: String
    public var ttlSeconds: UInt64?
    public var expiresAt: Int64?

    public init(id: String, volume: Int64, name: String?, firstChunk: UInt64?, chunkCount: UInt64, remaining: UInt64,
                role: String, ttlSeconds: UInt64?, expiresAt: Int64?) {
        self.id = id
        self.volume = volume
        self.name = name
        self.firstChunk = firstChunk
        self.chunkCount = chunkCount
        self.remaining = remaining
        self.role = role
        self.ttlSeconds = ttlSeconds
        self.expiresAt = expiresAt
    }
}

/// An extra NBD export of a volume, maybe bound to a pooled reservation.
public struct StoredExport: Sendable, Equatable {
    public var name: String
    public var volume: Int64
    public var reservation: String?

    public init(name: String, volume: Int64, reservation: String?) {
        self.name = name
        self.volume = volume
        self.reservation = reservation
    }
}
