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
    /// How physical chunk numbers map to suppliers, in chunk order. A
    /// supplier that grows gets a further segment at the end, so existing
    /// chunk numbers never move.
    public private(set) var segments: [Segment] = []
    public var allocator = ChunkAllocator(capacity: 0)
    /// Chunks promised to pooled reservations and not drawn yet: free on
    /// the allocator, but not for writes without a reservation.
    public var pooledReservedChunks: UInt64 = 0
    /// Chunks mapped by range reservations and not written yet.
    public var unwrittenReservedChunks: UInt64 = 0
    /// What a write that finds no space does.
    public var onNoSpace = NoSpacePolicy.error
    /// Percent of capacity committed (allocated + reserved) at which
    /// `pool.low-space` events fire.
    public var lowSpaceThresholds: [Int] = [80, 90, 95]
    /// Suppliers that failed, by index: sticky until an operator clears
    /// them (or a restart finds the device working).
    public private(set) var supplierFaults: [Int: SupplierFault] = [:]
    /// Faults recorded since start: a clear that raced with a new fault sees it changed.
    public private(set) var faultsRecorded: UInt64 = 0

    /// A run of physical chunks on one supplier.
    public struct Segment: Equatable, Sendable {
        public var firstChunk: UInt64
        public var supplier: Int
        /// Byte offset in the supplier of the segment's first chunk.
        public var supplierOffset: UInt64
        public var chunks: UInt64

        public init(firstChunk: UInt64, supplier: Int, supplierOffset: UInt64, chunks: UInt64) {
            self.firstChunk = firstChunk
            self.supplier = supplier
            self.supplierOffset = supplierOffset
            self.chunks = chunks
        }
    }
    /// Free chunks whose "may hold data" mark is durable, so a write can
    /// use them at once and a crash before its mapping commits still gets
    /// them zeroed. Taken out of `allocator`, still counted as free.
    private var prepared: [UInt64] = []
    private var preparedHead = 0
    /// Chunks taken out of `allocator` for a preparation not yet durable.
    private var preparing: [UInt64] = []

    public static let maximumSuppliers = 64

    public static func validate(chunkSize: UInt64) throws(RemapError) {
        guard chunkSizeRange.contains(chunkSize), chunkSize.nonzeroBitCount == 1 else {
            throw .invalidArgument("chunkSizeBytes must be a power of two from 4096 to 4194304, got \(chunkSize)")
        }
    }

    /// Refuses a pool of more than `maximum` chunks (`--max-chunks-per-pool`):
    /// the engine keeps a bit per chunk, and the pool check and usage
    /// figures visit them all.
    public static func checkChunkCount(_ chunks: UInt64, of name: String, chunkSize: UInt64, maximum: UInt64) throws(RemapError) {
        guard chunks > maximum else { return }
        throw .invalidArgument(
            "pool '\(name)' would have \(chunks) chunks of \(chunkSize) bytes, more than the \(maximum) a pool may have "
                + "(maxChunksPerPool, set by remapd --max-chunks-per-pool): use larger chunks or less space")
    }

    /// `segments` as stored (loaded as they are, whatever their size); nil
    /// lays the suppliers out one after another, refusing more than
    /// `maximumChunks` in all.
    public init(name: String, chunkSize: UInt64, suppliers: [Supplier], segments: [Segment]? = nil,
                maximumChunks: UInt64 = .max) throws(RemapError) {
        try Name.validate(name, kind: "pool")
        try Self.validate(chunkSize: chunkSize)
        self.name = name
        self.chunkSize = chunkSize
        if let segments, !segments.isEmpty {
            self.suppliers = suppliers
            for segment in segments {
                guard segment.supplier < suppliers.count, segment.firstChunk == allocator.capacity else {
                    throw .internal("metadata: pool '\(name)' has inconsistent segments")
                }
                self.segments.append(segment)
                allocator.grow(by: segment.chunks)
            }
        } else {
            let chunks = suppliers.reduce(UInt64(0)) { $0 + $1.sizeBytes / chunkSize }
            try Self.checkChunkCount(chunks, of: name, chunkSize: chunkSize, maximum: maximumChunks)
            for supplier in suppliers { try add(supplier, maximumChunks: maximumChunks) }
        }
    }

    /// Chunks the pool would have with `more`, refused past `maximum`.
    public func checkRoom(for more: UInt64, maximum: UInt64) throws(RemapError) {
        let (total, overflow) = allocator.capacity.addingReportingOverflow(more)
        try Self.checkChunkCount(overflow ? .max : total, of: name, chunkSize: chunkSize, maximum: maximum)
    }

    /// Adds a supplier; its whole chunks become free space at once. Refused
    /// when the pool would have more than `maximumChunks`.
    @discardableResult
    public func add(_ supplier: Supplier, maximumChunks: UInt64 = .max) throws(RemapError) -> Segment {
        let chunks = supplier.sizeBytes / chunkSize
        guard chunks > 0 else {
            throw .invalidArgument("supplier '\(supplier.path)' is smaller than one chunk (\(chunkSize) bytes)")
        }
        try checkRoom(for: chunks, maximum: maximumChunks)
        let segment = Segment(firstChunk: allocator.capacity, supplier: suppliers.count, supplierOffset: 0, chunks: chunks)
        segments.append(segment)
        suppliers.append(supplier)
        allocator.grow(by: chunks)
        return segment
    }

    /// Chunks supplier `index` would add if it grew to `sizeBytes`.
    public func chunksAdded(growing index: Int, to sizeBytes: UInt64) -> UInt64 {
        let used = segments.filter { $0.supplier == index }.reduce(UInt64(0)) { $0 + $1.chunks }
        return sizeBytes / chunkSize > used ? sizeBytes / chunkSize - used : 0
    }

    /// Records that supplier `index` grew to `sizeBytes`: its new whole
    /// chunks become free space at once, in a new segment. Nil when the
    /// growth adds no whole chunk; refused (nothing changes) when the pool
    /// would have more than `maximumChunks`.
    public func grow(supplier index: Int, to sizeBytes: UInt64, maximumChunks: UInt64 = .max) throws(RemapError) -> Segment? {
        try checkRoom(for: chunksAdded(growing: index, to: sizeBytes), maximum: maximumChunks)
        let used = segments.filter { $0.supplier == index }.reduce(UInt64(0)) { $0 + $1.chunks }
        suppliers[index].sizeBytes = sizeBytes
        let chunks = sizeBytes / chunkSize
        guard chunks > used else { return nil }
        let segment = Segment(firstChunk: allocator.capacity, supplier: index, supplierOffset: used * chunkSize,
                              chunks: chunks - used)
        segments.append(segment)
        allocator.grow(by: segment.chunks)
        return segment
    }

    /// Which supplier holds physical chunk `chunk`, and at what byte offset.
    public func location(of chunk: UInt64) -> (supplier: Int, offset: UInt64) {
        var low = 0
        var high = segments.count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if segments[middle].firstChunk <= chunk { low = middle } else { high = middle - 1 }
        }
        let segment = segments[low]
        return (segment.supplier, segment.supplierOffset + (chunk - segment.firstChunk) * chunkSize)
    }

    /// Chunks that are physically free (on the allocator or prepared).
    public var physicallyFreeChunks: UInt64 { allocator.freeCount + stashedChunks }
    /// Free chunks a write without a reservation may take.
    public var unreservedFreeChunks: UInt64 { physicallyFreeChunks - min(pooledReservedChunks, physicallyFreeChunks) }

    public var capacityBytes: UInt64 { allocator.capacity * chunkSize }
    /// Chunks holding data (or being reclaimed).
    public var allocatedBytes: UInt64 { (allocator.usedCount - stashedChunks - unwrittenReservedChunks) * chunkSize }
    /// The unused part of live reservations.
    public var reservedBytes: UInt64 { (pooledReservedChunks + unwrittenReservedChunks) * chunkSize }
    public var freeBytes: UInt64 { unreservedFreeChunks * chunkSize }

    /// Percent of capacity committed: allocated + reserved.
    public var committedPercent: Double {
        capacityBytes == 0 ? 0 : Double(allocatedBytes + reservedBytes) * 100 / Double(capacityBytes)
    }
    /// Free chunks ready for writes (prepared) or being prepared.
    public var stashedChunks: UInt64 { UInt64(prepared.count - preparedHead + preparing.count) }
    public var preparedCount: Int { prepared.count - preparedHead }
    /// The prepared chunks and those being prepared (for the pool check).
    public var stashedChunkList: [UInt64] { Array(prepared[preparedHead...]) + preparing }

    /// Takes up to `count` free chunks to prepare (mark durably); call
    /// `didPrepare` with them once the mark is durable.
    public func startPreparing(_ count: Int) -> [UInt64] {
        var chunks: [UInt64] = []
        while chunks.count < count, let chunk = allocator.allocate() { chunks.append(chunk) }
        preparing += chunks
        return chunks
    }

    public func didPrepare(_ chunks: [UInt64]) {
        let done = Set(chunks)
        preparing.removeAll { done.contains($0) }
        if preparedHead > 4096 && preparedHead * 2 > prepared.count {
            prepared.removeFirst(preparedHead)
            preparedHead = 0
        }
        prepared.append(contentsOf: chunks)
    }

    /// Gives back chunks whose preparation failed.
    public func preparationFailed(_ chunks: [UInt64]) {
        let failed = Set(chunks)
        preparing.removeAll { failed.contains($0) }
        for chunk in chunks { allocator.release(chunk) }
    }

    /// A prepared chunk for a write, or nil when none is ready (see
    /// `freeBytes` to tell "wait for preparation" from "out of space").
    public func takeChunk() -> UInt64? {
        guard preparedHead < prepared.count else { return nil }
        defer { preparedHead += 1 }
        return prepared[preparedHead]
    }

    /// A free chunk to map without writing to it (a reservation's
    /// reserved-unwritten chunks): free chunks are always clean, so one from
    /// the allocator will do when none is prepared. Nil when the pool has no
    /// free chunk at all; the caller checks `unreservedFreeChunks` first.
    /// How many `takeCleanChunk` calls can succeed now (chunks being
    /// prepared are neither prepared nor on the allocator yet).
    public var cleanChunksAvailable: UInt64 { UInt64(preparedCount) + allocator.freeCount }

    public func takeCleanChunk() -> UInt64? {
        takeChunk() ?? allocator.allocate()
    }

    /// Returns a chunk taken by `takeChunk` that was not used.
    public func returnChunk(_ chunk: UInt64) {
        if preparedHead > 0 && prepared[preparedHead - 1] == chunk {
            preparedHead -= 1
        } else {
            prepared.append(chunk)
        }
    }

    // MARK: - Health

    /// Offline when a supplier was missing at start, degraded when one
    /// failed since, else online. Kept, not derived: the data path asks at
    /// every request.
    public private(set) var state = PoolState.online

    /// What failed, one clause per supplier; nil when online.
    public var stateReason: String? {
        supplierFaults.isEmpty ? nil : supplierFaults.sorted { $0.key < $1.key }.map(\.value.message).joined(separator: "; ")
    }

    /// Records that supplier `index` failed; the first fault of a supplier
    /// is kept (it is the cause). Returns whether the pool's state changed.
    @discardableResult
    public func recordFault(_ fault: SupplierFault, supplier index: Int) -> Bool {
        let before = state
        faultsRecorded += 1
        if supplierFaults[index] == nil || fault.kind == .missing { supplierFaults[index] = fault }
        state = supplierFaults.values.contains { $0.kind == .missing } ? .offline : .degraded
        return state != before
    }

    /// The operator cleared the faults (the suppliers passed their checks).
    public func clearFaults() {
        supplierFaults = [:]
        state = .online
    }

    /// What the control plane shows; `volumes` are the pool's volumes.
    public func info(volumes: [Volume]) -> PoolInfo {
        let provisioned = volumes.reduce(UInt64(0)) { $0 + $1.sizeBytes }
        return PoolInfo(
            name: name, chunkSizeBytes: chunkSize, capacityBytes: capacityBytes,
            allocatedBytes: allocatedBytes, reservedBytes: reservedBytes, freeBytes: freeBytes,
            provisionedBytes: provisioned, onNoSpace: onNoSpace, lowSpaceThresholds: lowSpaceThresholds,
            overcommitRatio: capacityBytes == 0 ? 0 : Double(provisioned) / Double(capacityBytes),
            volumeCount: volumes.count,
            suppliers: suppliers.enumerated().map { index, supplier in
                SupplierInfo(id: supplier.id, kind: supplier.kind.rawValue, path: supplier.path, sizeBytes: supplier.sizeBytes,
                             preallocated: supplier.preallocated, state: supplierFaults[index]?.kind.rawValue ?? "ok",
                             error: supplierFaults[index]?.message)
            },
            state: state, stateReason: stateReason)
    }
}

/// Whether a pool serves (DESIGN.md, "When the hardware fails").
public enum PoolState: String, Codable, Sendable, CaseIterable {
    /// Reads and writes.
    case online
    /// A supplier failed: reads work; writes, TRIM, WRITE_ZEROES and FLUSH fail with EIO.
    case degraded
    /// A supplier was missing or unusable at start: no I/O at all.
    case offline
}

/// Why a supplier does not serve.
public struct SupplierFault: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// Write-back or a write failed, or the file was deleted or truncated.
        case failed
        /// Missing, short or unopenable at start.
        case missing
    }

    public var kind: Kind
    public var message: String

    public init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }
}

/// What a write that needs a chunk and finds no space does.
public enum NoSpacePolicy: Sendable, Equatable, Codable {
    /// Fail at once with ENOSPC.
    case error
    /// Wait up to this many seconds for space, then fail with ENOSPC.
    case queue(seconds: Int)

    public static let maximumQueueSeconds = 300

    public init(from decoder: any Decoder) throws {
        if let text = try? decoder.singleValueContainer().decode(String.self), text == "error" {
            self = .error
            return
        }
        let container = try decoder.container(keyedBy: Key.self)
        self = .queue(seconds: try container.decode(Int.self, forKey: .queueSeconds))
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .error:
            var container = encoder.singleValueContainer()
            try container.encode("error")
        case .queue(let seconds):
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(seconds, forKey: .queueSeconds)
        }
    }

    private enum Key: String, CodingKey { case queueSeconds }
}
