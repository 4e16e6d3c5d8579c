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
        self.capacity = 0
        self.freeCount = 0
        self.words = []
        grow(by: capacity)
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

    /// Returns runs of chunks to the free set, a word at a time (a deleted
    /// volume's chunks come back in long runs).
    public mutating func release(_ runs: [Range<UInt64>]) {
        for run in runs {
            precondition(run.upperBound <= capacity, "chunks \(run) released outside pool of \(capacity)")
            var chunk = run.lowerBound
            while chunk < run.upperBound {
                let index = Int(chunk / 64)
                let base = UInt64(index) * 64
                let bits = Self.bits((chunk - base)..<min(run.upperBound - base, 64))
                precondition(words[index] & bits == bits, "chunks of \(run) released but not allocated")
                words[index] &= ~bits
                freeCount += UInt64(bits.nonzeroBitCount)
                chunk = base + 64
            }
        }
    }

    /// Adds `count` free chunks at the end (a supplier joined the pool).
    /// Word at a time: adding a million chunks touches 16 thousand words,
    /// which matters on the engine thread.
    public mutating func grow(by count: UInt64) {
        guard count > 0 else { return }
        let old = capacity
        capacity += count
        freeCount += count
        // The last word's bits past the old end were marked used: free those now inside.
        if old % 64 != 0 {
            let index = words.count - 1
            let end = min(capacity - UInt64(index) * 64, 64)
            words[index] &= ~Self.bits(old % 64..<end)
        }
        let needed = Int((capacity + 63) / 64)
        guard needed > words.count else { return }
        // Not `append(contentsOf: repeatElement(...))`: unspecialized (a debug
        // build), that costs a generic call per word, 100 times slower.
        words += Array(repeating: 0, count: needed - words.count)
        // Bits past the new end are marked used so they are never handed out.
        if capacity % 64 != 0 { words[needed - 1] = ~Self.bits(0..<(capacity % 64)) }
    }

    /// How many words of 64 chunks the bitmap has.
    public var wordCount: Int { words.count }

    /// The used bits of chunks `64 * index ..< 64 * index + 64`, bit 0 first;
    /// chunks past the capacity read free.
    public func usedBits(word index: Int) -> UInt64 {
        let base = UInt64(index) * 64
        guard capacity - base < 64 else { return words[index] }
        return words[index] & Self.bits(0..<(capacity - base))
    }

    /// A word with the bits of `range` (within 0...64) set.
    public static func bits(_ range: Range<UInt64>) -> UInt64 {
        guard !range.isEmpty else { return 0 }
        let high = range.upperBound == 64 ? ~UInt64(0) : (1 << range.upperBound) - 1
        return high & ~((1 << range.lowerBound) - 1)
    }
}
