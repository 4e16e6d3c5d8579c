import RemapCore
import Testing

@Suite struct ChunkAllocatorTests {
    @Test func hands_out_every_chunk_once_then_nothing() {
        var allocator = ChunkAllocator(capacity: 130)
        var seen = Set<UInt64>()
        while let chunk = allocator.allocate() { #expect(seen.insert(chunk).inserted) }
        #expect(seen == Set(0..<130))
        #expect(allocator.freeCount == 0)
        #expect(allocator.allocate() == nil)
    }

    @Test func sequential_allocation_is_contiguous() {
        var allocator = ChunkAllocator(capacity: 1000)
        let chunks = (0..<100).compactMap { _ in allocator.allocate() }
        #expect(chunks == Array(0..<100))
    }

    @Test func release_and_mark_used_keep_the_count() {
        var allocator = ChunkAllocator(capacity: 64)
        allocator.markUsed(5)
        allocator.markUsed(63)
        #expect(allocator.usedCount == 2)
        #expect(allocator.isUsed(63))
        allocator.release(5)
        #expect(allocator.usedCount == 1)
        #expect(!allocator.isUsed(5))
    }

    /// Growth against a model, across word boundaries: every chunk below
    /// the capacity is handed out once, none past it.
    @Test func growth_frees_exactly_the_new_chunks() {
        for start: UInt64 in [0, 1, 63, 64, 65, 100, 128] {
            for added: UInt64 in [1, 2, 62, 63, 64, 65, 127, 200] {
                var allocator = ChunkAllocator(capacity: start)
                while allocator.allocate() != nil {}
                allocator.grow(by: added)
                #expect(allocator.capacity == start + added && allocator.freeCount == added)
                var handed: [UInt64] = []
                while let chunk = allocator.allocate() { handed.append(chunk) }
                #expect(handed.sorted() == Array(start..<(start + added)), "grow \(start) by \(added)")
                #expect((0..<allocator.wordCount).allSatisfy { allocator.usedBits(word: $0) == (($0 + 1) * 64 <= start + added ? ~0 : ChunkAllocator.bits(0..<((start + added) % 64))) })
            }
        }
    }

    /// Adding 2^28 chunks (1 TiB of 4 KiB chunks) sets 4 M words, not 2^28
    /// bits one by one: well under a second even in a debug build (one
    /// chunk at a time took minutes).
    @Test func growth_is_word_at_a_time() {
        var allocator = ChunkAllocator(capacity: 1000)
        let clock = ContinuousClock()
        let took = clock.measure { allocator.grow(by: 1 << 28) }
        #expect(allocator.freeCount == (1 << 28) + 1000)
        #expect(took < .seconds(1), "growing by 2^28 chunks took \(took)")
        let more = clock.measure { allocator.grow(by: 1 << 24) }
        #expect(more < .milliseconds(250), "growing by 2^24 more took \(more)")
    }

    @Test func grow_adds_free_chunks_at_the_end() {
        var allocator = ChunkAllocator(capacity: 10)
        for _ in 0..<10 { _ = allocator.allocate() }
        allocator.grow(by: 100)
        #expect(allocator.capacity == 110)
        #expect(allocator.freeCount == 100)
        #expect(allocator.allocate() == 10)
    }
}

@Suite struct ChunkMapTests {
    @Test func maps_unmaps_and_counts() {
        var map = ChunkMap(virtualChunks: 5000)
        #expect(map.lookup(4999) == nil)
        #expect(map.map(4999, to: 7) == nil)
        #expect(map.map(0, to: 1) == nil)
        #expect(map.map(0, to: 2) == 1)
        #expect(map.lookup(4999) == 7)
        #expect(map.mappedCount == 2)
        #expect(map.unmap(0) == 2)
        #expect(map.unmap(0) == nil)
        #expect(map.unmap(3000) == nil)
        #expect(map.mappedCount == 1)
        var all: [(UInt64, UInt64)] = []
        map.forEachMapping { all.append(($0, $1)) }
        #expect(all.count == 1 && all[0] == (4999, 7))
    }
}

@Suite struct ChunkMapRangeTests {
    /// `forEachMapping(in:)` and `holes(in:)` against lookups, over ranges
    /// that start and end inside extents and pages.
    @Test(arguments: [1, 2, 3]) func ranges_agree_with_lookups(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var map = ChunkMap(virtualChunks: 20_000)
        for _ in 0..<3000 {
            let virtual = random.next() % 20_000
            map.map(virtual, to: virtual / 3 + random.next() % 2)
        }
        for _ in 0..<50 {
            let start = random.next() % 20_000
            let range = start..<min(20_000, start + random.next() % 9000)
            var mapped: [UInt64] = []
            map.forEachMapping(in: range) { virtual, physical in
                #expect(map.lookup(virtual) == physical)
                mapped.append(virtual)
            }
            #expect(mapped == range.filter { map.lookup($0) != nil })
            #expect(map.holes(in: range) == range.filter { map.lookup($0) == nil })
        }
    }
}

@Suite struct ChunkMapModelTests {
    @Test(arguments: [1, 2, 3, 4, 5])
    func behaves_like_a_dictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var size: UInt64 = 20_000
        var map = ChunkMap(virtualChunks: size)
        var model: [UInt64: UInt64] = [:]
        var nextPhysical: UInt64 = 0
        for step in 0..<20_000 {
            let roll = Int.random(in: 0..<100, using: &random)
            // Runs of sequential chunks with sequential physicals merge; random ones don't.
            let chunk = roll < 40 ? UInt64(step) % size : UInt64.random(in: 0..<size, using: &random)
            if roll < 75 {
                nextPhysical += roll < 60 ? 1 : UInt64.random(in: 1...3, using: &random)
                #expect(map.map(chunk, to: nextPhysical) == model[chunk])
                model[chunk] = nextPhysical
            } else if roll < 98 {
                #expect(map.unmap(chunk) == model.removeValue(forKey: chunk))
            } else {
                size = UInt64.random(in: 5_000...30_000, using: &random)
                map.resize(virtualChunks: size)
                model = model.filter { $0.key < size }
            }
            #expect(map.mappedCount == UInt64(model.count))
        }
        for chunk in 0..<size { #expect(map.lookup(chunk) == model[chunk]) }
        var seen: [UInt64: UInt64] = [:]
        var last: UInt64?
        map.forEachMapping { virtual, physical in
            #expect(last.map { $0 < virtual } ?? true)
            last = virtual
            seen[virtual] = physical
        }
        #expect(seen == model)
    }

    @Test func sequential_runs_cost_one_extent_per_page() {
        var map = ChunkMap(virtualChunks: 1 << 20)
        for chunk in UInt64(0)..<(1 << 20) { map.map(chunk, to: chunk + 7) }
        // 256 pages of one extent each (a little room reserved), plus the directory:
        // far below a byte per mapped chunk.
        #expect(Double(map.memoryBytes) / Double(1 << 20) < 0.05, "\(map.memoryBytes) bytes")
        #expect(map.lookup(123_456) == 123_463)
    }

    @Test func scattered_chunks_cost_about_eight_bytes_each() {
        var map = ChunkMap(virtualChunks: 1 << 20)
        var random = SplitMix64(seed: 9)
        var physical: UInt64 = 0
        var chunks = Array(UInt64(0)..<(1 << 20))
        chunks.shuffle(using: &random)
        for chunk in chunks.prefix(500_000) {
            physical += 2  // never contiguous
            map.map(chunk, to: physical)
        }
        let perChunk = Double(map.memoryBytes) / 500_000
        #expect(perChunk < 9.5, "\(perChunk) bytes per mapped chunk")
    }
}
