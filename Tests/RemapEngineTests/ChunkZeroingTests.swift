import RemapCore
@testable import RemapEngine
import Testing

/// Freed chunks become supplier ranges on the committer's thread.
@Suite struct ChunkZeroingTests {
    /// Two segments: chunks 0..<10 at byte 0 of fd 3, 10..<20 at byte 4096 of fd 4 (a grown supplier).
    let zeroing = ChunkZeroing(pool: "p", chunkSize: 4096, pieces: [
        .init(firstChunk: 0, chunks: 10, fd: 3, supplierOffset: 0, punch: true),
        .init(firstChunk: 10, chunks: 10, fd: 4, supplierOffset: 4096, punch: false),
    ], chunks: [12, 3, 9, 11, 2, 10, 4, 19])

    @Test func neighbours_merge_and_segments_split() {
        let (ranges, runs) = zeroing.plan()
        #expect(runs == [2..<5, 9..<13, 19..<20])
        let chunk: UInt64 = 4096
        let expected: [[UInt64]] = [
            [3, 2 * chunk, 3 * chunk],      // 2, 3, 4
            [3, 9 * chunk, chunk],          // 9, the end of fd 3's segment
            [4, chunk, 3 * chunk],          // 10, 11, 12
            [4, 10 * chunk, chunk],         // 19
        ]
        #expect(ranges.map { [UInt64($0.fd), $0.offset, $0.length] } == expected)
        #expect(ranges.map(\.punch) == [true, true, false, false])
    }

    @Test func the_allocator_takes_the_runs_back_a_word_at_a_time() {
        var allocator = ChunkAllocator(capacity: 200)
        while allocator.allocate() != nil {}
        allocator.release([2..<5, 60..<130, 199..<200])
        #expect(allocator.freeCount == 3 + 70 + 1)
        #expect(!allocator.isUsed(2) && !allocator.isUsed(64) && !allocator.isUsed(129) && allocator.isUsed(130) && !allocator.isUsed(199))
    }
}
