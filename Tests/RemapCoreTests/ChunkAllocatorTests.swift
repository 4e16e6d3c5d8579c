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
