import RemapCore
import Testing

/// The changed ranges between snapshots, from the chunk maps alone.
@Suite struct SnapshotChangesTests {
    let chunk: UInt64 = 64 * 1024

    func map(_ chunks: UInt64, _ mappings: [(virtual: UInt64, physical: UInt64)]) -> ChunkMap {
        var map = ChunkMap(virtualChunks: chunks)
        for (virtual, physical) in mappings { map.map(virtual, to: physical) }
        return map
    }

    func changes(_ map: ChunkMap, size: UInt64? = nil, base: ChunkMap? = nil) -> SnapshotChanges {
        SnapshotChanges(snapshot: "s", map: map, sizeBytes: size ?? map.virtualChunks * chunk, chunkSize: chunk,
                        base: base.map { ("b", $0) })
    }

    @Test func an_empty_snapshot_holds_no_data() {
        let result = changes(map(16, []))
        #expect(result.ranges.isEmpty)
        #expect(result.changedBytes == 0)
        #expect(result.base == nil)
        #expect(result.sizeBytes == 16 * chunk && result.granularityBytes == chunk)
    }

    @Test func without_base_adjacent_extents_merge_into_one_range() {
        // 0 and 1 are not physically consecutive: two extents, one range.
        let result = changes(map(16, [(0, 7), (1, 3), (2, 4), (5, 9)]))
        #expect(result.ranges == [ByteRange(offsetBytes: 0, lengthBytes: 3 * chunk), ByteRange(offsetBytes: 5 * chunk, lengthBytes: chunk)])
        #expect(result.changedBytes == 4 * chunk)
    }

    @Test func a_whole_volume_is_one_range_across_pages() {
        let chunks: UInt64 = 10_000  // more than two pages of 4096
        let result = changes(map(chunks, (0..<chunks).map { ($0, $0 + 1) }))
        #expect(result.ranges == [ByteRange(offsetBytes: 0, lengthBytes: chunks * chunk)])
        #expect(result.changedBytes == chunks * chunk)
    }

    @Test func the_last_chunk_is_cut_at_the_size() {
        let size = 3 * chunk + 100
        let result = changes(map(4, [(3, 1)]), size: size)
        #expect(result.ranges == [ByteRange(offsetBytes: 3 * chunk, lengthBytes: 100)])
        #expect(result.changedBytes == 100)
    }

    @Test func equal_maps_differ_nowhere() {
        let shared = map(16, [(0, 1), (1, 2), (9, 3)])
        let result = changes(shared, base: shared)
        #expect(result.ranges.isEmpty && result.changedBytes == 0)
        #expect(result.base == "b")
    }

    @Test func against_a_base_written_holes_and_remappings_count() {
        let base = map(16, [(0, 1), (1, 2), (4, 5)])
        // 1 remapped (copy on write), 2 written, 4 unmapped (trimmed).
        let snapshot = map(16, [(0, 1), (1, 20), (2, 21)])
        let result = changes(snapshot, base: base)
        #expect(result.ranges == [ByteRange(offsetBytes: chunk, lengthBytes: 2 * chunk), ByteRange(offsetBytes: 4 * chunk, lengthBytes: chunk)])
        #expect(result.changedBytes == 3 * chunk)
    }

    @Test func a_larger_base_tail_is_not_the_snapshots() {
        // The snapshot is 4 chunks; the base (the volume, grown) has data past it.
        let base = map(8, [(6, 1)])
        let snapshot = map(4, [(1, 2)])
        let result = changes(snapshot, base: base)
        #expect(result.ranges == [ByteRange(offsetBytes: chunk, lengthBytes: chunk)])
        #expect(result.sizeBytes == 4 * chunk)
    }

    @Test func a_smaller_base_counts_as_holes_past_its_end() {
        let base = map(2, [(0, 1)])
        let snapshot = map(6, [(0, 1), (5, 2)])
        let result = changes(snapshot, base: base)
        #expect(result.ranges == [ByteRange(offsetBytes: 5 * chunk, lengthBytes: chunk)])
    }
}
