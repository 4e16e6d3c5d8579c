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
    }

    private static func chunks(_ bytes: UInt64, _ chunkSize: UInt64) -> UInt64 {
        (bytes + chunkSize - 1) / chunkSize
    }

    /// Changes the size. Growing adds holes. Shrinking unmaps every chunk
    /// that lies wholly past the new end and returns them (virtual,
    /// physical), for the caller to free once the change is durable; the
    /// chunks stay allocated in the pool until then.
    public func resize(to newSize: UInt64) -> [NewMapping] {
        let newChunks = Self.chunks(newSize, pool.chunkSize)
        var cut: [NewMapping] = []
        if newChunks < map.virtualChunks {
            map.forEachMapping { virtual, physical in
                if virtual >= newChunks { cut.append(NewMapping(virtualChunk: virtual, physicalChunk: physical)) }
            }
        }
        map.resize(virtualChunks: newChunks)
        sizeBytes = newSize
        return cut
    }

    /// Chunks holding data: mapped and not reserved-unwritten.
    public var allocatedBytes: UInt64 { (map.mappedCount - min(unwrittenChunks, map.mappedCount)) * pool.chunkSize }
    private var unwrittenChunks: UInt64 {
        reservations.reduce(0) { $0 + ($1.range != nil ? $1.remaining : 0) }
    }
    public var reservedBytes: UInt64 { reservations.reduce(0) { $0 + $1.remaining } * pool.chunkSize }
    /// Mapped chunks (written or reserved) plus what pooled reservations
    /// still hold, capped at the size.
    public var guaranteedWritableBytes: UInt64 {
        let pooled = reservations.reduce(UInt64(0)) { $0 + ($1.kind == .pooled ? $1.remaining : 0) }
        return min(sizeBytes, (map.mappedCount + pooled) * pool.chunkSize)
    }

    /// The range reservation owning `virtual` as reserved-unwritten, if any.
    public func unwrittenOwner(of virtual: UInt64) -> Reservation? {
        reservations.first { $0.isUnwritten(virtual) }
    }

    /// A live range reservation covering `virtual`, if any.
    public func rangeReservation(covering virtual: UInt64) -> Reservation? {
        reservations.first { $0.range?.contains(virtual) == true && !$0.released }
    }

    public var info: VolumeInfo {
        VolumeInfo(
            id: id, name: name, pool: pool.name, sizeBytes: sizeBytes,
            allocatedBytes: allocatedBytes, reservedBytes: reservedBytes, guaranteedWritableBytes: guaranteedWritableBytes,
            createdAt: createdAt, exportName: name, labels: labels)
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
