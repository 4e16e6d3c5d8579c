/// Physical space from one or more suppliers, cut into fixed-size chunks.
///
/// Physical chunks are numbered pool-wide: supplier 0 holds chunks
/// `0..<n0`, supplier 1 the next `n1`, and so on. Owned by one thread (the
/// engine's); not Sendable on purpose.
public final class Pool {
    public static let defaultChunkSize: UInt64 = 64 * 1024
    public static let chunkSizeRange: ClosedRange<UInt64> = 4096...(4 * 1024 * 1024)

    public let name: String
    public let chunkSize: UInt64
    public private(set) var suppliers: [Supplier] = []
    /// First physical chunk of each supplier.
    public private(set) var firstChunks: [UInt64] = []
    public var allocator = ChunkAllocator(capacity: 0)
    /// Free chunks whose "may hold data" mark is durable, so a write can
    /// use them at once and a crash before its mapping commits still gets
    /// them zeroed. Taken out of `allocator`, still counted as free.
    private var prepared: [UInt64] = []
    private var preparedHead = 0
    /// Chunks taken out of `allocator` for a preparation not yet durable.
    public private(set) var preparing = 0

    public static let maximumSuppliers = 64

    public static func validate(chunkSize: UInt64) throws(RemapError) {
        guard chunkSizeRange.contains(chunkSize), chunkSize.nonzeroBitCount == 1 else {
            throw .invalidArgument("chunkSizeBytes must be a power of two from 4096 to 4194304, got \(chunkSize)")
        }
    }

    public init(name: String, chunkSize: UInt64, suppliers: [Supplier]) throws(RemapError) {
        try Name.validate(name, kind: "pool")
        try Self.validate(chunkSize: chunkSize)
        self.name = name
        self.chunkSize = chunkSize
        for supplier in suppliers { try add(supplier) }
    }

    /// Adds a supplier; its whole chunks become free space at once.
    public func add(_ supplier: Supplier) throws(RemapError) {
        let chunks = supplier.sizeBytes / chunkSize
        guard chunks > 0 else {
            throw .invalidArgument("supplier '\(supplier.path)' is smaller than one chunk (\(chunkSize) bytes)")
        }
        firstChunks.append(allocator.capacity)
        suppliers.append(supplier)
        allocator.grow(by: chunks)
    }

    /// Which supplier holds physical chunk `chunk`, and at what byte offset.
    public func location(of chunk: UInt64) -> (supplier: Int, offset: UInt64) {
        var index = firstChunks.count - 1
        while index > 0 && firstChunks[index] > chunk { index -= 1 }
        return (index, (chunk - firstChunks[index]) * chunkSize)
    }

    public var capacityBytes: UInt64 { allocator.capacity * chunkSize }
    public var allocatedBytes: UInt64 { (allocator.usedCount - stashedChunks) * chunkSize }
    public var freeBytes: UInt64 { (allocator.freeCount + stashedChunks) * chunkSize }
    /// Free chunks ready for writes (prepared) or being prepared.
    public var stashedChunks: UInt64 { UInt64(prepared.count - preparedHead + preparing) }
    public var preparedCount: Int { prepared.count - preparedHead }

    /// Takes up to `count` free chunks to prepare (mark durably); call
    /// `didPrepare` with them once the mark is durable.
    public func startPreparing(_ count: Int) -> [UInt64] {
        var chunks: [UInt64] = []
        while chunks.count < count, let chunk = allocator.allocate() { chunks.append(chunk) }
        preparing += chunks.count
        return chunks
    }

    public func didPrepare(_ chunks: [UInt64]) {
        preparing -= chunks.count
        if preparedHead > 4096 && preparedHead * 2 > prepared.count {
            prepared.removeFirst(preparedHead)
            preparedHead = 0
        }
        prepared.append(contentsOf: chunks)
    }

    /// Gives back chunks whose preparation failed.
    public func preparationFailed(_ chunks: [UInt64]) {
        preparing -= chunks.count
        for chunk in chunks { allocator.release(chunk) }
    }

    /// A prepared chunk for a write, or nil when none is ready (see
    /// `freeBytes` to tell "wait for preparation" from "out of space").
    public func takeChunk() -> UInt64? {
        guard preparedHead < prepared.count else { return nil }
        defer { preparedHead += 1 }
        return prepared[preparedHead]
    }

    /// Returns a chunk taken by `takeChunk` that was not used.
    public func returnChunk(_ chunk: UInt64) {
        if preparedHead > 0 && prepared[preparedHead - 1] == chunk {
            preparedHead -= 1
        } else {
            prepared.append(chunk)
        }
    }

    /// What the control plane shows; `volumes` are the pool's volumes.
    public func info(volumes: [Volume]) -> PoolInfo {
        let provisioned = volumes.reduce(UInt64(0)) { $0 + $1.sizeBytes }
        return PoolInfo(
            name: name, chunkSizeBytes: chunkSize, capacityBytes: capacityBytes,
            allocatedBytes: allocatedBytes, freeBytes: freeBytes, provisionedBytes: provisioned,
            overcommitRatio: capacityBytes == 0 ? 0 : Double(provisioned) / Double(capacityBytes),
            volumeCount: volumes.count,
            suppliers: suppliers.map {
                SupplierInfo(id: $0.id, kind: $0.kind.rawValue, path: $0.path, sizeBytes: $0.sizeBytes,
                             preallocated: $0.preallocated)
            })
    }
}
