/// A virtual LBA range of a given size, thin over one pool. Owned by the
/// engine's thread.
public final class Volume {
    /// Compact key used by the chunk mappings in metadata.
    public let key: Int64
    public let id: String
    public let name: String
    public let pool: Pool
    public private(set) var sizeBytes: UInt64
    public let createdAt: String
    public var labels: [String: String]
    public var map: ChunkMap
    /// Live reservations, oldest first.
    public var reservations: [Reservation] = []
    /// The metadata layer this image's own mapping changes go to (see
    /// `Snapshot.swift`): a volume's writable top layer, or a snapshot's
    /// frozen one. Starts as the volume's key.
    public var layer: Int64
    /// The images that share chunks with this one (itself included).
    public var family: Family
    /// Set for a snapshot: its own name and that of the volume it was taken of.
    public let snapshot: SnapshotIdentity?
    /// For a clone: the id of the snapshot it was made from.
    public var originSnapshot: String?
    /// Virtual chunks whose current mapping is known not to be shared, so a
    /// write there skips the search of the family. Cleared by a snapshot.
    private var ownedChunks: [UInt64] = []

    public init(key: Int64, id: String, name: String, pool: Pool, sizeBytes: UInt64, createdAt: String,
                labels: [String: String] = [:]) {
        self.key = key
        self.id = id
        self.name = name
        self.pool = pool
        self.sizeBytes = sizeBytes
        self.createdAt = createdAt
        self.labels = labels
        self.map = ChunkMap(virtualChunks: Self.chunks(sizeBytes, pool.chunkSize))
        self.layer = key
        self.family = Family()
        self.snapshot = nil
        family.members.append(self)
    }

    /// A snapshot of `origin`: the same map (pages shared, nothing copied),
    /// read-only, in the origin's family.
    public init(snapshotOf origin: Volume, key: Int64, id: String, name: String, createdAt: String, layer: Int64) {
        self.key = key
        self.id = id
        self.name = origin.name
        self.pool = origin.pool
        self.sizeBytes = origin.sizeBytes
        self.createdAt = createdAt
        self.labels = [:]
        self.map = origin.map
        self.layer = layer
        self.family = origin.family
        self.snapshot = SnapshotIdentity(name: name, volume: origin.name, volumeKey: origin.key)
        family.members.append(self)
    }

    /// A snapshot as loaded from metadata; its map is filled by the caller.
    public init(key: Int64, id: String, snapshot: SnapshotIdentity, pool: Pool, sizeBytes: UInt64, createdAt: String,
                layer: Int64, family: Family) {
        self.key = key
        self.id = id
        self.name = snapshot.volume
        self.pool = pool
        self.sizeBytes = sizeBytes
        self.createdAt = createdAt
        self.labels = [:]
        self.map = ChunkMap(virtualChunks: Self.chunks(sizeBytes, pool.chunkSize))
        self.layer = layer
        self.family = family
        self.snapshot = snapshot
        family.members.append(self)
    }

    public var isSnapshot: Bool { snapshot != nil }
    /// The NBD export name: the volume's name, or `VOLUME@SNAPSHOT`.
    public var exportName: String { snapshot.map { "\($0.volume)@\($0.name)" } ?? name }

    /// Whether another image of the family maps `virtual` to `physical`
    /// (then a write there must copy on write, and unmapping it frees nothing).
    public func isShared(_ virtual: UInt64, _ physical: UInt64) -> Bool {
        guard family.members.count > 1 else { return false }
        // Another member let go of it, not durably yet: still theirs after a crash.
        if !family.pendingReleases.isEmpty, family.pendingReleases[physical] != nil { return true }
        let word = Int(virtual / 64)
        if word < ownedChunks.count, ownedChunks[word] & (1 << (virtual % 64)) != 0 { return false }
        if mappedByAnother(virtual, physical) { return true }
        markOwned(virtual)
        return false
    }

    /// Whether another image of the family maps `virtual` to `physical` now
    /// (`isShared` without the releases not yet durable).
    public func mappedByAnother(_ virtual: UInt64, _ physical: UInt64) -> Bool {
        family.members.reversed().contains {
            $0 !== self && virtual < $0.map.virtualChunks && $0.map.lookup(virtual) == physical
        }
    }

    /// Records that the mapping of `virtual` is this image's alone.
    public func markOwned(_ virtual: UInt64) {
        guard family.members.count > 1 else { return }
        let word = Int(virtual / 64)
        if word >= ownedChunks.count {
            ownedChunks.append(contentsOf: repeatElement(0, count: Int((map.virtualChunks + 63) / 64) - ownedChunks.count))
        }
        if word < ownedChunks.count { ownedChunks[word] |= 1 << (virtual % 64) }
    }

    /// Forgets what was known owned: everything may be shared now.
    public func forgetOwnership() { ownedChunks = [] }

    /// Forgets that `virtual` is owned: it maps a shared chunk again (a
    /// failed copy on write was undone).
    public func forgetOwned(_ virtual: UInt64) {
        let word = Int(virtual / 64)
        if word < ownedChunks.count { ownedChunks[word] &= ~(1 << (virtual % 64)) }
    }

    /// Leaves the family (the image is being deleted).
    public func leaveFamily() {
        family.members.removeAll { $0 === self }
    }

    /// Joins `other`'s family with `map` as its content (a revert).
    public func replaceMap(with map: ChunkMap, sizeBytes: UInt64) {
        self.map = map
        self.sizeBytes = sizeBytes
        forgetOwnership()
    }

    private static func chunks(_ bytes: UInt64, _ chunkSize: UInt64) -> UInt64 {
        (bytes + chunkSize - 1) / chunkSize
    }

    /// Changes the size. Growing adds holes. Shrinking unmaps every chunk
    /// that lies wholly past the new end: `unmapped` lists them, `freed` the
    /// mappings among them whose chunks no snapshot or clone shares, for the
    /// caller to free once the change is durable (they stay allocated in
    /// the pool until then).
    public func resize(to newSize: UInt64) -> (freed: [NewMapping], unmapped: [UInt64]) {
        let newChunks = Self.chunks(newSize, pool.chunkSize)
        var freed: [NewMapping] = []
        var unmapped: [UInt64] = []
        if newChunks < map.virtualChunks {
            map.forEachMapping(in: newChunks..<map.virtualChunks) { virtual, physical in
                unmapped.append(virtual)
                if !isShared(virtual, physical) { freed.append(NewMapping(virtualChunk: virtual, physicalChunk: physical)) }
            }
        }
        map.resize(virtualChunks: newChunks)
        sizeBytes = newSize
        return (freed, unmapped)
    }

    /// Chunks holding data: mapped and not reserved-unwritten.
    public var allocatedBytes: UInt64 { (map.mappedCount - min(unwrittenChunks, map.mappedCount)) * pool.chunkSize }
    private var unwrittenChunks: UInt64 {
        reservations.reduce(0) { $0 + ($1.range != nil ? $1.remaining : 0) }
    }
    public var reservedBytes: UInt64 { reservations.reduce(0) { $0 + $1.remaining } * pool.chunkSize }
    /// Mapped chunks this volume may overwrite in place (not shared with a
    /// snapshot or clone) plus what pooled reservations (sticky copy-on-write
    /// ones included) still hold, capped at the size.
    public var guaranteedWritableBytes: UInt64 { guaranteedWritableBytes(sharedChunks: usage().shared) }

    public func guaranteedWritableBytes(sharedChunks: UInt64) -> UInt64 {
        let pooled = reservations.reduce(UInt64(0)) { $0 + ($1.kind == .pooled ? $1.remaining : 0) }
        return min(sizeBytes, (map.mappedCount - min(sharedChunks, map.mappedCount) + pooled) * pool.chunkSize)
    }

    /// The range reservation owning `virtual` as reserved-unwritten, if any.
    public func unwrittenOwner(of virtual: UInt64) -> Reservation? {
        reservations.first { $0.isUnwritten(virtual) }
    }

    /// A live range reservation covering `virtual`, if any.
    public func rangeReservation(covering virtual: UInt64) -> Reservation? {
        reservations.first { $0.range?.contains(virtual) == true && !$0.released }
    }

    public var info: VolumeInfo { info(sharedChunks: usage().shared) }

    /// What the control plane shows, given how many mapped chunks are shared.
    public func info(sharedChunks: UInt64) -> VolumeInfo {
        VolumeInfo(
            id: id, name: name, pool: pool.name, sizeBytes: sizeBytes,
            allocatedBytes: allocatedBytes, reservedBytes: reservedBytes,
            guaranteedWritableBytes: guaranteedWritableBytes(sharedChunks: sharedChunks),
            createdAt: createdAt, exportName: name, labels: labels, originSnapshot: originSnapshot)
    }

    /// The largest volume: 1 PiB. The chunk map's directory costs 4 bytes
    /// per 4096 chunks of size (16 MiB at 1 PiB with 64 KiB chunks).
    public static let maximumSize: UInt64 = 1 << 50

    /// Checks a size for a new volume: positive and whole 512-byte sectors,
    /// which every block client assumes.
    public static func validate(sizeBytes: UInt64) throws(RemapError) {
        guard sizeBytes > 0 else { throw .invalidArgument("sizeBytes must be greater than 0") }
        guard sizeBytes % 512 == 0 else {
            throw .invalidArgument("sizeBytes must be a multiple of 512, got \(sizeBytes)")
        }
        guard sizeBytes <= maximumSize else {
            throw .invalidArgument("sizeBytes \(sizeBytes) is larger than the maximum volume size of \(maximumSize) bytes (1 PiB)")
        }
    }
}

extension Volume {
    /// The reservation the volume was created with, as far as it still stands.
    public var createdReservation: VolumeReservation {
        if reservations.contains(where: { $0.role == .thick }) { return .thick }
        if let pooled = reservations.first(where: { $0.role == .volumeDefault }) { return .bytes(pooled.bytes) }
        return .none
    }
}
