import RemapCore

/// One change to persistent metadata. The engine produces them in the order
/// they happened; the store applies a batch of them as one transaction.
public enum MetadataChange: Sendable, Equatable {
    case createPool(name: String, chunkSize: UInt64)
    /// Removes an empty pool and its suppliers.
    case deletePool(name: String)
    case addSupplier(pool: String, ordinal: Int, supplier: Supplier)
    case addSegment(pool: String, segment: StoredSegment)
    case setSupplierSize(id: String, sizeBytes: UInt64)
    /// onNoSpace's queue seconds (0 = error) and the low-space thresholds.
    case setPoolSettings(name: String, queueSeconds: Int, thresholds: [Int])
    case createVolume(StoredVolume)
    /// Removes the volume and all its mappings.
    case deleteVolume(key: Int64)
    case resizeVolume(key: Int64, sizeBytes: UInt64)
    /// Replaces the volume's labels.
    case setLabels(volume: Int64, labels: [String: String])
    case map(volume: Int64, virtualChunk: UInt64, physicalChunk: UInt64)
    /// A mapping made by a range reservation: backed, reads zeros, unwritten.
    case reserveChunk(volume: Int64, virtualChunk: UInt64, physicalChunk: UInt64)
    /// A reserved-unwritten chunk got data.
    case markWritten(volume: Int64, virtualChunk: UInt64)
    case createReservation(StoredReservation)
    case deleteReservation(id: String)
    case setReservationRemaining(id: String, remaining: UInt64)
    /// A renewal: the new end and the TTL later renewals default to.
    case setReservationExpiry(id: String, expiresAt: Int64?, ttlSeconds: UInt64?)
    case resizeReservation(id: String, chunkCount: UInt64)
    case createExport(name: String, volume: Int64, reservation: String?)
    case deleteExport(name: String)
    case unmap(volume: Int64, virtualChunk: UInt64)
    /// A freed chunk that may still hold old data: zeroed before reuse, also
    /// after a crash.
    case markDirty(pool: String, physicalChunk: UInt64)
    case clearDirty(pool: String, physicalChunk: UInt64)
    /// A new mapping layer on top of `parent` (see RemapCore's Snapshot.swift).
    case createLayer(key: Int64, parent: Int64?)
    /// The layer a volume's writes go to from now on.
    case setVolumeLayer(volume: Int64, layer: Int64)
    /// Reads of `virtualChunk` through `layer` see a hole, whatever the
    /// layers below map there.
    case tombstone(layer: Int64, virtualChunk: UInt64)
    /// Reserved-unwritten chunks stay with the volume when a snapshot
    /// freezes its layer: they move to its new top layer (leaving tombstones
    /// in the old one when it has layers below).
    case moveUnwritten(from: Int64, to: Int64, tombstone: Bool)
    /// Removes a layer and all its rows.
    case deleteLayer(key: Int64)
    /// Folds `child` into `parent`, a layer no image uses any more whose only
    /// child it is: the child's rows replace the parent's (the parent's rows
    /// they hide go), and the child's image and children move to the parent.
    /// Costs the child's rows — usually the few written since a snapshot.
    case foldLayer(child: Int64, into: Int64)
    case createSnapshot(StoredSnapshot)
    case deleteSnapshot(key: Int64)
}

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
}
