import RemapCore
import Testing

/// The live pool check (`GET /v1/pools/{name}/check`): a bitmap of the
/// pool's chunks against the allocator, one claim per distinct (virtual,
/// physical) pair of a family.
@Suite struct PoolCheckTests {
    /// An allocator of `capacity` chunks with `used` taken.
    func allocator(_ capacity: UInt64, used: [UInt64]) -> ChunkAllocator {
        var allocator = ChunkAllocator(capacity: capacity)
        for chunk in used { allocator.markUsed(chunk) }
        return allocator
    }

    func map(_ size: UInt64, _ pairs: [(UInt64, UInt64)]) -> ChunkMap {
        var map = ChunkMap(virtualChunks: size)
        for (virtual, physical) in pairs { map.map(virtual, to: physical) }
        return map
    }

    @Test func a_family_sharing_chunks_at_the_same_place_is_clean() {
        let volume = map(10_000, [(0, 5), (1, 6), (5000, 7)])
        var snapshot = volume
        // The snapshot's page is a copy now (distinct storage), still sharing 5 and 6.
        snapshot.map(2, to: 8)
        let check = PoolCheck(PoolCheck.Input(pool: "p", allocator: allocator(200, used: [5, 6, 7, 8, 100]), stashed: [100],
                                              families: [[volume, snapshot]]))
        #expect(check.ok, "\(check)")
        #expect(check.referencedChunks == 4 && check.usedChunks == 4)
        #expect(check.leakedCount == 0 && check.unbackedCount == 0 && check.conflictCount == 0)
    }

    @Test func leaked_unbacked_and_conflicting_chunks_are_found() {
        let a = map(100, [(0, 1), (1, 2), (2, 3)])
        let b = map(100, [(7, 3)])             // another family maps chunk 3
        let c = map(100, [(4, 9), (5, 9)])     // one image maps chunk 9 twice
        let beyond = map(100, [(0, 198), (1, 199), (2, 200), (3, 201)])  // the last two past the pool
        let check = PoolCheck(PoolCheck.Input(pool: "p", allocator: allocator(200, used: [1, 3, 9, 50, 64, 199]), stashed: [],
                                              families: [[a], [b], [c], [beyond]]))
        #expect(!check.ok)
        #expect(check.leakedChunks == [50, 64] && check.leakedCount == 2)
        #expect(Set(check.unbackedChunks) == [2, 198, 200, 201] && check.unbackedCount == 4)
        #expect(Set(check.conflicts) == [3, 9] && check.conflictCount == 2)
        #expect(check.referencedChunks == 6)  // 1, 2, 3, 9, 198, 199
    }

    @Test func samples_are_capped_and_counts_are_not() {
        let check = PoolCheck(PoolCheck.Input(pool: "p", allocator: allocator(1000, used: Array(0..<500)), stashed: [0, 1],
                                              families: []))
        #expect(check.leakedCount == 498 && check.leakedChunks.count == PoolCheck.sampleLimit)
        #expect(check.leakedChunks.first == 2 && check.usedChunks == 498)
    }

    /// A pool of 2^26 chunks costs the check 8 MiB of bits, and a pass over
    /// them: fast even in a debug build (8 bytes a chunk were 512 MiB).
    @Test func a_big_pool_is_checked_on_a_bitmap() {
        var big = ChunkAllocator(capacity: 1 << 26)
        let first = (0..<4096).compactMap { _ in big.allocate() }
        let volume = map(1 << 20, first.enumerated().map { (UInt64($0.offset) * 3, $0.element) })
        let clock = ContinuousClock()
        var check: PoolCheck?
        let took = clock.measure {
            check = PoolCheck(PoolCheck.Input(pool: "p", allocator: big, stashed: [], families: [[volume, volume]]))
        }
        #expect(check?.ok == true && check?.referencedChunks == 4096)
        #expect(took < .seconds(2), "took \(took)")
    }
}

@Suite struct DistinctRunTests {
    /// Against a set of pairs, for random families whose maps share some
    /// pages and differ in others.
    @Test(arguments: [1, 2, 3, 4]) func every_pair_once(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var maps: [ChunkMap] = []
        var current = ChunkMap(virtualChunks: 20_000)
        for _ in 0..<5 {
            for _ in 0..<300 {
                let virtual = random.next() % 20_000
                if random.next() % 4 == 0 { current.unmap(virtual) } else { current.map(virtual, to: random.next() % 50 + virtual / 2) }
            }
            maps.append(current)
        }
        var expected = Set<[UInt64]>()
        for map in maps { map.forEachMapping { expected.insert([$0, $1]) } }
        var seen: [[UInt64]] = []
        ChunkMap.forEachDistinctRun(in: maps) { virtual, physical, length in
            for step in 0..<length { seen.append([virtual + step, physical + step]) }
        }
        #expect(seen.count == expected.count)
        #expect(Set(seen) == expected)
    }
}
