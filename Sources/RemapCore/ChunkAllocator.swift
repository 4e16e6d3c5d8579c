/// The free and used physical chunks of one pool, as a bitmap (1 = used).
///
/// Allocation is next-fit from a moving cursor, so a sequential writer gets
/// physically contiguous chunks and reads of them merge into large I/O.
/// Costs one bit per chunk: 2 MiB for 16 million chunks.
public struct ChunkAllocator: Sendable {
    public private(set) var capacity: UInt64
    public private(set) var freeCount: UInt64
    private var words: [UInt64]
    private var cursor: Int = 0

    public init(capacity: UInt64) {
        self.capacity = capacity
        self.freeCount = capacity
        self.words = Array(repeating: 0, count: Int((capacity + 63) / 64))
        // Bits past the end are marked used so they are never handed out.
        let tail = Int(capacity % 64)
        if tail != 0 { words[words.count - 1] = ~UInt64(0) << UInt64(tail) }
    }

    public var usedCount: UInt64 { capacity - freeCount }

    public func isUsed(_ chunk: UInt64) -> Bool {
        precondition(chunk < capacity, "chunk \(chunk) outside pool of \(capacity)")
        return words[Int(chunk / 64)] & (1 << (chunk % 64)) != 0
    }

    /// Takes a free chunk, or returns nil when none is left.
    public mutating func allocate() -> UInt64? {
        guard freeCount > 0 else { return nil }
        let count = words.count
        for step in 0..<count {
            let index = (cursor + step) % count
            let word = words[index]
            if word != ~UInt64(0) {
                let bit = (~word).trailingZeroBitCount
                words[index] = word | (1 << UInt64(bit))
                freeCount -= 1
                cursor = index
                return UInt64(index) * 64 + UInt64(bit)
            }
        }
        // freeCount said a chunk was free; the bitmap disagrees.
        preconditionFailure("allocator bitmap and free count disagree")
    }

    /// Marks a chunk used that the metadata says is mapped (at load time).
    public mutating func markUsed(_ chunk: UInt64) {
        precondition(!isUsed(chunk), "chunk \(chunk) mapped twice")
        words[Int(chunk / 64)] |= 1 << (chunk % 64)
        freeCount -= 1
    }

    /// Returns a chunk to the free set.
    public mutating func release(_ chunk: UInt64) {
        precondition(isUsed(chunk), "chunk \(chunk) released but not allocated")
        words[Int(chunk / 64)] &= ~(1 << (chunk % 64))
        freeCount += 1
    }

    /// Adds `count` free chunks at the end (a supplier joined the pool).
    public mutating func grow(by count: UInt64) {
        let old = capacity
        capacity += count
        let needed = Int((capacity + 63) / 64)
        if needed > words.count { words.append(contentsOf: repeatElement(~UInt64(0), count: needed - words.count)) }
        for chunk in old..<capacity { words[Int(chunk / 64)] &= ~(1 << (chunk % 64)) }
        freeCount += count
    }
}
