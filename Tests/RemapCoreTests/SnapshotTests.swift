import RemapCore
import Testing

@Suite struct SnapshotTests {
    let chunk: UInt64 = 64 * 1024

    func pool(chunks: UInt64) throws -> Pool {
        let supplier = Supplier(id: "s", kind: .file, path: "/p", sizeBytes: chunks * chunk, preallocated: true)
        let pool = try Pool(name: "p", chunkSize: chunk, suppliers: [supplier])
        pool.didPrepare(pool.startPreparing(Int(chunks)))
        return pool
    }

    /// The search order for pages shared with another image: a volume's
    /// newest snapshots first, a snapshot's neighbours first.
    @Test func others_nearest_first() throws {
        let volume = Volume(key: 1, id: "v", name: "v", pool: try pool(chunks: 100), sizeBytes: 4096 * 100, createdAt: "")
        let snapshots = (0..<5).map { Volume(snapshotOf: volume, key: Int64(10 + $0), id: "s\($0)", name: "s\($0)", createdAt: "", layer: 1) }
        #expect(volume.othersNearestFirst.map(\.id) == ["s4", "s3", "s2", "s1", "s0"])
        #expect(snapshots[1].othersNearestFirst.map(\.id) == ["s2", "s0", "s3", "v", "s4"])
        #expect(snapshots[4].othersNearestFirst.map(\.id) == ["s3", "s2", "s1", "s0", "v"])
    }

    @Test func a_snapshot_shares_everything_and_a_write_copies_only_what_it_touches() throws {
        let pool = try pool(chunks: 100)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 64 * chunk, createdAt: "")
        _ = try volume.plannedWrite(offset: 0, length: Int(4 * chunk))
        let snapshot = Volume(snapshotOf: volume, key: 2, id: "s", name: "s", createdAt: "", layer: 1)
        #expect(snapshot.map.mappedCount == 4)
        #expect(volume.isShared(0, snapshot.map.lookup(0)!))

        // A partial write into a shared chunk: a new chunk, copied.
        let partial = try volume.plannedWrite(offset: chunk + 100, length: 10)
        #expect(partial.copies.count == 1)
        #expect(partial.copies[0].whole == false)
        #expect(partial.copies[0].oldPhysical == snapshot.map.lookup(1))
        #expect(partial.segments.isEmpty)
        // A whole-chunk write: a new chunk, nothing to copy.
        let whole = try volume.plannedWrite(offset: 2 * chunk, length: Int(chunk))
        #expect(whole.copies.map(\.whole) == [true])
        // Writing the copied chunk again is in place.
        let again = try volume.plannedWrite(offset: chunk, length: 10)
        #expect(again.copies.isEmpty && again.newMappings.isEmpty && again.segments.count == 1)

        #expect(snapshot.map.lookup(1) != volume.map.lookup(1))
        #expect(snapshot.map.lookup(0) == volume.map.lookup(0))
        #expect(pool.allocatedBytes == 6 * chunk)
        #expect(snapshot.map.changedRuns(comparedWith: volume.map) == [1..<3])
    }

    @Test func deleting_frees_only_chunks_nobody_else_maps() throws {
        let pool = try pool(chunks: 100)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 64 * chunk, createdAt: "")
        _ = try volume.plannedWrite(offset: 0, length: Int(3 * chunk))
        let snapshot = Volume(snapshotOf: volume, key: 2, id: "s", name: "s", createdAt: "", layer: 1)
        _ = try volume.plannedWrite(offset: 0, length: Int(chunk))
        #expect(snapshot.usage().unique == 1)
        #expect(snapshot.usage().shared == 2)
        #expect(volume.guaranteedWritableBytes == chunk)
        #expect(snapshot.chunksOnlyHere() == [snapshot.map.lookup(0)!])
        #expect(volume.chunksOnlyHere() == [volume.map.lookup(0)!])
        snapshot.leaveFamily()
        #expect(volume.chunksOnlyHere().count == 3)
    }

    @Test func no_space_for_a_copy_leaves_the_map_as_it_was() throws {
        let pool = try pool(chunks: 4)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 64 * chunk, createdAt: "")
        _ = try volume.plannedWrite(offset: 0, length: Int(3 * chunk))
        let before = (0..<3).map { volume.map.lookup($0) }
        _ = Volume(snapshotOf: volume, key: 2, id: "s", name: "s", createdAt: "", layer: 1)
        #expect(throws: RemapError.self) { _ = try volume.plannedWrite(offset: 0, length: Int(3 * chunk)) }
        #expect((0..<3).map { volume.map.lookup($0) } == before)
        #expect(pool.allocatedBytes == 3 * chunk)
    }

    @Test func changed_runs_skip_equal_pages_and_count_size_differences() {
        var a = ChunkMap(virtualChunks: 10_000)
        for chunk in stride(from: UInt64(0), to: 10_000, by: 3) { a.map(chunk, to: chunk) }
        var b = a
        #expect(a.changedRuns(comparedWith: b).isEmpty)
        b.map(5000, to: 99_999)
        b.unmap(9)
        #expect(a.changedRuns(comparedWith: b) == [9..<10, 5000..<5001])
        var c = a
        c.resize(virtualChunks: 20_000)
        c.map(15_000, to: 1)
        #expect(a.changedRuns(comparedWith: c) == [15_000..<15_001])
    }

    /// Issue 10, defect 1: a write that ran out of prepared chunks part way
    /// put the shared chunks back but kept them marked as owned, so its
    /// retry overwrote the snapshots' chunks in place.
    @Test func a_write_retried_after_running_out_of_chunks_still_copies_shared_chunks() throws {
        let supplier = Supplier(id: "s", kind: .file, path: "/p", sizeBytes: 64 * chunk, preallocated: true)
        let pool = try Pool(name: "p", chunkSize: chunk, suppliers: [supplier])
        pool.didPrepare(pool.startPreparing(16))
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 16 * chunk, createdAt: "")
        _ = try volume.plannedWrite(offset: 0, length: Int(8 * chunk))
        let first = Volume(snapshotOf: volume, key: 2, id: "s1", name: "s1", createdAt: "", layer: 1)
        volume.forgetOwnership()
        _ = try volume.plannedWrite(offset: 100, length: 10)  // chunk 0 copied: the volume owns it
        let second = Volume(snapshotOf: volume, key: 3, id: "s2", name: "s2", createdAt: "", layer: 3)
        volume.forgetOwnership()
        // 7 chunks left in the stash: copying all 8 fails after 7.
        #expect(throws: RemapError.self) { _ = try volume.plannedWrite(offset: 0, length: Int(8 * chunk)) }
        for virtual in UInt64(0)..<8 { #expect(volume.map.lookup(virtual) == second.map.lookup(virtual)) }
        pool.didPrepare(pool.startPreparing(8))
        let retry = try volume.plannedWrite(offset: 0, length: Int(8 * chunk))
        #expect(retry.copies.count == 8)
        #expect(retry.segments.isEmpty)
        for virtual in UInt64(0)..<8 {
            #expect(volume.map.lookup(virtual) != first.map.lookup(virtual))
            #expect(volume.map.lookup(virtual) != second.map.lookup(virtual))
        }
    }
}
