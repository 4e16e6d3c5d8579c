import RemapCore
import Testing

/// Mapping rows by layer, as the store would stream them (for MetadataCheckTests).
struct LayerRows: MappingLayers {
    var layers: [Int64: [(virtual: UInt64, physical: UInt64?, unwritten: Bool)]] = [:]

    mutating func map(_ layer: Int64, _ virtual: UInt64, _ physical: UInt64, unwritten: Bool = false) {
        layers[layer, default: []].append((virtual, physical, unwritten))
    }

    mutating func tombstone(_ layer: Int64, _ virtual: UInt64) {
        layers[layer, default: []].append((virtual, nil, false))
    }

    func mappingRowCounts() throws(RemapError) -> [Int64: UInt64] {
        layers.filter { !$0.value.isEmpty }.mapValues { UInt64($0.count) }
    }

    func forEachMapping(
        layer: Int64,
        _ body: (_ virtual: UInt64, _ physical: UInt64?, _ unwritten: Bool) throws(RemapError) -> Void
    ) throws(RemapError) {
        for row in (layers[layer] ?? []).sorted(by: { $0.virtual < $1.virtual }) {
            try body(row.virtual, row.physical, row.unwritten)
        }
    }
}

@Suite struct MetadataCheckTests {
    static let chunk: UInt64 = 64 * 1024
    var input: MetadataCheck.Input
    var rows = LayerRows()

    /// Pool `p`: 100 chunks on one supplier that is there and big enough.
    init() {
        let supplier = Supplier(id: "s1", kind: .file, path: "/pools/p.img", sizeBytes: 100 * Self.chunk, preallocated: true)
        let pool = StoredPool(name: "p", chunkSize: Self.chunk, suppliers: [supplier],
                              segments: [StoredSegment(firstChunk: 0, supplierID: "s1", supplierOffset: 0, chunks: 100)])
        input = MetadataCheck.Input(pools: [pool], volumes: [],
                                    suppliers: ["s1": .present(sizeBytes: 100 * Self.chunk, identity: "1:1")])
    }

    mutating func volume(_ key: Int64, _ name: String, chunks: UInt64 = 8, layer: Int64? = nil, clone origin: String? = nil) {
        input.volumes.append(StoredVolume(key: key, id: "id-\(name)", name: name, pool: "p", sizeBytes: chunks * Self.chunk,
                                          createdAt: "", layer: layer, originSnapshot: origin))
    }

    mutating func snapshot(_ key: Int64, of volumeKey: Int64, _ name: String, layer: Int64, chunks: UInt64 = 8) {
        let volume = input.volumes.first { $0.key == volumeKey }?.name ?? "gone"
        input.snapshots.append(StoredSnapshot(key: key, id: "id-\(volume)@\(name)", name: name, volumeKey: volumeKey,
                                              volumeName: volume, pool: "p", layer: layer, sizeBytes: chunks * Self.chunk,
                                              createdAt: ""))
    }

    /// Volume `v` (key 1) wrote chunks 0 and 1, snapshot `v@s` (key 3)
    /// froze its layer 1, then `v` (now on layer 2) overwrote chunk 0.
    mutating func volumeWithSnapshot() {
        volume(1, "v", layer: 2)
        snapshot(3, of: 1, "s", layer: 1)
        input.layerParents[2] = .some(1)
        rows.map(1, 0, 5)
        rows.map(1, 1, 6)
        rows.map(2, 0, 7)
    }

    func check() throws -> MetadataReport { try MetadataCheck.run(input, mappings: rows) }

    func kinds(_ report: MetadataReport) -> [MetadataFinding.Kind] {
        (report.findings + report.pools.flatMap(\.findings)).map(\.kind)
    }

    func finding(_ report: MetadataReport, _ kind: MetadataFinding.Kind) -> MetadataFinding? {
        (report.findings + report.pools.flatMap(\.findings)).first { $0.kind == kind }
    }

    @Test mutating func a_clean_state_has_no_findings_and_exact_figures() throws {
        volume(1, "a")
        rows.map(1, 0, 0)
        rows.map(1, 1, 1)
        rows.map(1, 7, 2)
        input.reservations.append(StoredReservation(id: "r1", volume: 1, name: nil, firstChunk: nil, chunkCount: 4, remaining: 3,
                                                    role: "", ttlSeconds: nil, expiresAt: nil))
        input.dirtyChunks["p"] = [2, 40]  // one still mapped, one freed: both fine
        let report = try check()
        #expect(report.ok)
        #expect(kinds(report).isEmpty)
        let pool = try #require(report.pools.first)
        #expect(pool.ok)
        #expect(pool.capacityChunks == 100)
        #expect(pool.mappedChunks == 3)
        #expect(pool.reservedChunks == 3)
        #expect(pool.freeChunks == 94)
        #expect(pool.dirtyChunks == 2)
        #expect(pool.allocatedBytes + pool.reservedBytes + pool.freeBytes == pool.capacityBytes)
        #expect(report.mappingRowCount == 3)
        #expect(report.lines.last == "1 pool(s), 1 volume(s), 0 snapshot(s), 1 layer(s), 3 mapping row(s) checked: 0 error(s), 0 note(s)")
    }

    @Test mutating func a_chunk_past_the_pool_is_an_error() throws {
        volume(1, "a")
        rows.map(1, 0, 99)
        rows.map(1, 1, 100)
        rows.map(1, 2, 250)
        rows.map(1, 3, 1 << 41)  // past what any chunk map holds: the engine could not load it
        let report = try check()
        #expect(!report.ok)
        let beyond = report.pools[0].findings.filter { $0.kind == .chunkBeyondCapacity }
        #expect(beyond.map(\.sample) == [[100, 250]])
        #expect(beyond[0].detail.contains("volume 'a'"))
        #expect(report.findings.map(\.kind) == [.chunkBeyondCapacity])
        #expect(report.pools[0].mappedChunks == 1)
    }

    @Test mutating func a_chunk_mapped_by_two_trees_is_a_conflict() throws {
        volume(1, "a")
        volume(2, "b")
        rows.map(1, 0, 5)
        rows.map(2, 3, 5)
        rows.map(2, 4, 6)
        let report = try check()
        #expect(!report.ok)
        let conflict = try #require(finding(report, .chunkConflict))
        #expect(conflict.sample == [5])
        #expect(conflict.detail == "physical chunks mapped by volume 'a' and volume 'b', which are not snapshots or clones of one another")
        #expect(report.pools[0].mappedChunks == 2)
    }

    @Test mutating func snapshots_and_clones_share_chunks_at_the_same_place() throws {
        volumeWithSnapshot()
        // A clone of the snapshot, on its own layer 5 above the snapshot's, wrote chunk 1.
        volume(4, "c", layer: 5, clone: "id-v@s")
        input.layerParents[5] = .some(1)
        rows.map(5, 1, 8)
        let report = try check()
        #expect(kinds(report).isEmpty)
        #expect(report.pools[0].mappedChunks == 4)  // 5, 6 shared; 7 the volume's; 8 the clone's
        #expect(report.pools[0].snapshotCount == 1)
    }

    @Test mutating func one_tree_mapping_a_chunk_at_two_places_is_a_conflict() throws {
        volumeWithSnapshot()
        rows.map(2, 3, 6)  // the volume maps the snapshot's chunk 1 at chunk 3
        let report = try check()
        let conflict = try #require(finding(report, .chunkConflict))
        #expect(conflict.detail.hasSuffix("at different virtual chunks"))
        #expect(conflict.sample == [6])
    }

    @Test mutating func tombstones_hide_what_the_layers_below_map() throws {
        volumeWithSnapshot()
        input.snapshots = []  // snapshot deleted: layer 1 stays below the volume's
        rows.tombstone(2, 1)
        volume(9, "w")
        rows.map(9, 0, 6)  // chunk 6 was freed with the tombstone and reused
        let report = try check()
        #expect(kinds(report).isEmpty)
        #expect(report.pools[0].mappedChunks == 2)
    }

    @Test mutating func rows_past_an_image_are_ignored_and_each_image_is_cut_to_its_size() throws {
        volumeWithSnapshot()
        input.volumes[0].sizeBytes = 1 * Self.chunk  // shrunk after the snapshot
        rows.map(2, 20, 1 << 41)  // past every image: the engine never reads it
        volume(9, "w")
        rows.map(9, 0, 6)
        let report = try check()
        // The snapshot still maps chunk 6 at chunk 1: the conflict stays, the huge row does not count.
        #expect(kinds(report) == [.chunkConflict])
    }

    @Test mutating func a_missing_layer_row_is_found() throws {
        volumeWithSnapshot()
        input.layerParents = [:]  // layer 2's row is gone: the volume lost what it shares with the snapshot
        let report = try check()
        #expect(kinds(report).filter { $0 == .layerMissing }.count == 2)
        #expect(finding(report, .layerMissing)?.detail.contains("volume 'v' (key 1) reads layers down to layer 2") == true)
    }

    @Test mutating func a_cycle_of_layers_is_found() throws {
        volume(1, "a", layer: 5)
        input.layerParents = [5: 6, 6: 5]
        rows.map(5, 0, 1)
        let report = try check()
        let cycle = try #require(finding(report, .layerCycle))
        #expect(cycle.detail.contains("5 → 6 → 5"))
        #expect(report.pools[0].mappedChunks == 0)
    }

    @Test mutating func rows_and_layers_nobody_reaches_are_leaked() throws {
        volume(1, "a")
        rows.map(1, 0, 1)
        rows.map(42, 0, 2)
        rows.map(42, 1, 3)
        input.layerParents[50] = .some(nil)
        let report = try check()
        #expect(!report.ok)
        let rowsFinding = try #require(finding(report, .leakedRows))
        #expect(rowsFinding.count == 2)
        #expect(rowsFinding.detail.hasPrefix("layer 42 "))
        #expect(finding(report, .leakedLayer)?.detail.hasPrefix("layer 50 ") == true)
        #expect(report.pools[0].mappedChunks == 1)
    }

    @Test mutating func a_volume_writing_into_a_snapshot_layer_is_found() throws {
        volumeWithSnapshot()
        input.volumes[0].layer = 1  // the volume would write into its snapshot
        let report = try check()
        #expect(kinds(report).contains(.layerShared))
    }

    @Test mutating func reservations_must_belong_to_volumes_and_add_up() throws {
        volume(1, "a")
        input.reservations = [
            StoredReservation(id: "over", volume: 1, name: nil, firstChunk: nil, chunkCount: 2, remaining: 5,
                              role: "", ttlSeconds: nil, expiresAt: nil),
            StoredReservation(id: "gone", volume: 77, name: nil, firstChunk: nil, chunkCount: 2, remaining: 2,
                              role: "", ttlSeconds: nil, expiresAt: nil),
            StoredReservation(id: "long", volume: 1, name: nil, firstChunk: 6, chunkCount: 4, remaining: 0,
                              role: "", ttlSeconds: nil, expiresAt: nil),
        ]
        let report = try check()
        #expect(Set(kinds(report)) == [.reservationOverdrawn, .reservationOrphan, .reservationRange])
        #expect(report.pools[0].reservedChunks == 5)  // only the existing volume's count
    }

    @Test mutating func a_copy_on_write_reservation_is_bounded_by_its_range_reservation() throws {
        volume(1, "a")
        func reservation(_ id: String, name: String?, first: UInt64?, count: UInt64, remaining: UInt64, role: String) -> StoredReservation {
            StoredReservation(id: id, volume: 1, name: name, firstChunk: first, chunkCount: count, remaining: remaining,
                              role: role, ttlSeconds: nil, expiresAt: nil)
        }
        // Grown past its own chunk count by a second snapshot: fine while the range covers it.
        input.reservations = [reservation("range", name: nil, first: 0, count: 6, remaining: 0, role: ""),
                              reservation("cow", name: "range", first: nil, count: 2, remaining: 6, role: "cow")]
        var report = try check()
        #expect(kinds(report).isEmpty)
        #expect(report.pools[0].reservedChunks == 6)

        input.reservations[1].remaining = 7
        input.reservations.append(reservation("stray", name: "released", first: nil, count: 1, remaining: 1, role: "cow"))
        report = try check()
        #expect(kinds(report) == [.reservationOverdrawn, .reservationOrphan])
    }

    @Test mutating func unwritten_marks_outside_a_range_reservation_are_a_note() throws {
        volume(1, "a")
        input.reservations = [StoredReservation(id: "r", volume: 1, name: nil, firstChunk: 0, chunkCount: 2, remaining: 2,
                                                role: "", ttlSeconds: nil, expiresAt: nil)]
        rows.map(1, 0, 10, unwritten: true)
        rows.map(1, 1, 11, unwritten: true)
        rows.map(1, 5, 12, unwritten: true)  // its reservation was released before a kill -9
        let report = try check()
        #expect(report.ok)
        let note = try #require(finding(report, .unwrittenOrphan))
        #expect(note.severity == .note)
        #expect(note.sample == [5])
        let pool = report.pools[0]
        #expect(pool.unwrittenChunks == 2)
        #expect(pool.allocatedBytes == 1 * Self.chunk)
        #expect(pool.reservedBytes == 2 * Self.chunk)
        #expect(pool.allocatedBytes + pool.reservedBytes + pool.freeBytes == pool.capacityBytes)
        #expect(report.noteCount == 1 && report.errorCount == 0)
    }

    @Test mutating func more_mapped_and_reserved_than_capacity_is_overcommitted() throws {
        volume(1, "a", chunks: 200)
        for chunk in 0..<UInt64(90) { rows.map(1, chunk, chunk) }
        input.reservations = [StoredReservation(id: "r", volume: 1, name: nil, firstChunk: nil, chunkCount: 20, remaining: 20,
                                                role: "", ttlSeconds: nil, expiresAt: nil)]
        let report = try check()
        #expect(kinds(report) == [.overcommitted])
        #expect(report.pools[0].freeChunks == 0)
    }

    @Test mutating func suppliers_and_segments_are_checked() throws {
        let second = Supplier(id: "s2", kind: .file, path: "/pools/q.img", sizeBytes: 10 * Self.chunk, preallocated: true)
        let third = Supplier(id: "s3", kind: .file, path: "/pools/p.img", sizeBytes: 10 * Self.chunk, preallocated: true)
        input.pools.append(StoredPool(name: "q", chunkSize: Self.chunk, suppliers: [second, third], segments: [
            StoredSegment(firstChunk: 0, supplierID: "s2", supplierOffset: 0, chunks: 20),
            StoredSegment(firstChunk: 30, supplierID: "s3", supplierOffset: 0, chunks: 10),
            StoredSegment(firstChunk: 40, supplierID: "s9", supplierOffset: 0, chunks: 10),
        ]))
        input.suppliers["s2"] = .missing
        input.suppliers["s3"] = .present(sizeBytes: 5 * Self.chunk, identity: "1:1")
        let report = try check()
        #expect(report.pools[0].ok)
        let q = report.pools[1]
        #expect(Set(q.findings.map(\.kind)) == [.segmentPastSupplier, .segmentGap, .segmentSupplier, .supplierMissing, .supplierShort])
        #expect(report.findings.map(\.kind) == [.supplierShared])
        #expect(report.findings[0].detail == "suppliers /pools/p.img of pool 'p', /pools/p.img of pool 'q' are the same file")
    }

    @Test mutating func dirty_chunks_lie_inside_their_pool() throws {
        input.dirtyChunks = ["p": [1, 100, 101], "gone": [1]]
        let report = try check()
        #expect(report.pools[0].findings.map(\.kind) == [.dirtyBeyondCapacity])
        #expect(report.pools[0].findings[0].sample == [100, 101])
        #expect(report.findings.map(\.kind) == [.poolMissing])
    }

    @Test mutating func exports_name_what_exists() throws {
        volume(1, "a")
        input.exports = [StoredExport(name: "x", volume: 1, reservation: "r-gone"), StoredExport(name: "y", volume: 8, reservation: nil)]
        let report = try check()
        #expect(report.findings.map(\.kind) == [.exportOrphan, .exportOrphan])
    }

    @Test mutating func many_problems_of_a_kind_are_counted_not_all_listed() throws {
        volume(1, "a", chunks: 400)
        for chunk in 0..<UInt64(300) { rows.map(1, chunk, 1000 + chunk) }
        for key in 0..<Int64(60) { rows.map(100 + key, 0, 1) }
        let report = try check()
        let beyond = report.pools[0].findings.filter { $0.kind == .chunkBeyondCapacity }
        #expect(beyond.count == 1)
        #expect(beyond[0].count == 300)
        #expect(beyond[0].sample.count == MetadataFinding.sampleLimit)
        #expect(beyond[0].line.hasSuffix("(300: 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015, ...)"))
        let leaked = report.findings.filter { $0.kind == .leakedRows }
        #expect(leaked.count == 51)
        #expect(leaked.last?.detail == "10 more findings of this kind, not listed")
    }
}
