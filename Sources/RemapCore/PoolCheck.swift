/// What `GET /v1/pools/{name}/check` answers.
public struct PoolCheck: Codable, Sendable, Equatable {
    public init(pool: String, ok: Bool, usedChunks: UInt64, referencedChunks: UInt64, leakedChunks: [UInt64], leakedCount: UInt64,
                unbackedChunks: [UInt64], unbackedCount: UInt64, conflicts: [UInt64], conflictCount: UInt64) {
        self.pool = pool
        self.ok = ok
        self.usedChunks = usedChunks
        self.referencedChunks = referencedChunks
        self.leakedChunks = leakedChunks
        self.leakedCount = leakedCount
        self.unbackedChunks = unbackedChunks
        self.unbackedCount = unbackedCount
        self.conflicts = conflicts
        self.conflictCount = conflictCount
    }

    public var pool: String
    public var ok: Bool
    /// Chunks holding data (used on the allocator, not counting the prepared stash).
    public var usedChunks: UInt64
    /// Distinct chunks some image maps.
    public var referencedChunks: UInt64
    public var leakedChunks: [UInt64]
    public var leakedCount: UInt64
    public var unbackedChunks: [UInt64]
    public var unbackedCount: UInt64
    public var conflicts: [UInt64]
    public var conflictCount: UInt64
}

extension PoolCheck {
    /// What the check reads of a live pool, taken on the engine thread in
    /// one step between two requests. The allocator and the maps are
    /// copy-on-write values: taking them copies nothing, and the engine's
    /// later changes never reach these copies. The check itself runs on
    /// the caller's thread.
    public struct Input: Sendable {
        public var pool: String
        public var allocator: ChunkAllocator
        /// Chunks used on the allocator but free: prepared for writes, or being prepared.
        public var stashed: [UInt64]
        /// The maps of every image of the pool, by family: images of one
        /// family (a volume, its snapshots, their clones) share a chunk by
        /// mapping it at the same virtual chunk.
        public var families: [[ChunkMap]]

        public init(pool: String, allocator: ChunkAllocator, stashed: [UInt64], families: [[ChunkMap]]) {
            self.pool = pool
            self.allocator = allocator
            self.stashed = stashed
            self.families = families
        }
    }

    /// At most this many chunks are listed of each finding; all are counted.
    public static let sampleLimit = 100

    /// Checks that every chunk the allocator counts as used is mapped by
    /// some image (or stashed), that every mapped chunk is used and within
    /// the pool, and that no chunk is mapped twice except by images of one
    /// family at the same virtual chunk. Costs one bit per chunk of the
    /// pool (2 MiB for 16 M chunks), whatever is mapped.
    public init(_ input: Input) {
        let allocator = input.allocator
        let capacity = allocator.capacity
        var claimed = [UInt64](repeating: 0, count: allocator.wordCount)
        var unbacked = ChunkSample()
        var conflicts = ChunkSample()
        for maps in input.families {
            // Each (virtual, physical) pair of the family claims its chunk once.
            ChunkMap.forEachDistinctRun(in: maps) { _, physical, length in
                let end = physical + length
                if end > capacity { unbacked.add(max(physical, capacity)..<end) }
                let stop = min(end, capacity)
                var chunk = physical
                while chunk < stop {
                    let index = Int(chunk / 64)
                    let base = UInt64(index) * 64
                    let bits = ChunkAllocator.bits((chunk - base)..<min(stop - base, 64))
                    let before = claimed[index]
                    conflicts.add(bits: before & bits, word: index)
                    unbacked.add(bits: bits & ~before & ~allocator.usedBits(word: index), word: index)
                    claimed[index] = before | bits
                    chunk = base + 64
                }
            }
        }
        var stashedBits: [Int: UInt64] = [:]
        for chunk in input.stashed where chunk < capacity { stashedBits[Int(chunk / 64), default: 0] |= 1 << (chunk % 64) }
        var leaked = ChunkSample()
        var used: UInt64 = 0
        var referenced: UInt64 = 0
        for index in 0..<claimed.count {
            let usedBits = allocator.usedBits(word: index)
            used += UInt64(usedBits.nonzeroBitCount)
            referenced += UInt64(claimed[index].nonzeroBitCount)
            leaked.add(bits: usedBits & ~claimed[index] & ~(stashedBits[index] ?? 0), word: index)
        }
        self.init(
            pool: input.pool, ok: leaked.count == 0 && unbacked.count == 0 && conflicts.count == 0,
            usedChunks: used - min(used, UInt64(input.stashed.count)), referencedChunks: referenced,
            leakedChunks: leaked.chunks, leakedCount: leaked.count,
            unbackedChunks: unbacked.chunks, unbackedCount: unbacked.count,
            conflicts: conflicts.chunks, conflictCount: conflicts.count)
    }
}

/// Chunks a check found: all counted, the first `PoolCheck.sampleLimit` listed.
private struct ChunkSample {
    var count: UInt64 = 0
    var chunks: [UInt64] = []

    /// Adds the chunks whose bits are set in `bits`, word `word` of a bitmap.
    mutating func add(bits: UInt64, word: Int) {
        guard bits != 0 else { return }
        count += UInt64(bits.nonzeroBitCount)
        var rest = bits
        while rest != 0 && chunks.count < PoolCheck.sampleLimit {
            chunks.append(UInt64(word) * 64 + UInt64(rest.trailingZeroBitCount))
            rest &= rest - 1
        }
    }

    mutating func add(_ range: Range<UInt64>) {
        count += UInt64(range.count)
        chunks += range.prefix(PoolCheck.sampleLimit - chunks.count)
    }
}
