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
    /// `markDirty` of many chunks as one change: a deletion hands over its
    /// list (counted off the engine thread) without a change per chunk.
    case markDirtyChunks(pool: String, physicalChunks: [UInt64])
    case clearDirtyChunks(pool: String, physicalChunks: [UInt64])
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
