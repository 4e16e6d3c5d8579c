import RemapCore
import Testing

/// The copy-on-write space range reservations hold once they share data.
@Suite struct CopyOnWritePlanTests {
    let chunk: UInt64 = 64 * 1024

    /// A volume of 16 chunks with a range reservation over chunks 0..<8
    /// whose chunks 4..<8 are reserved-unwritten (mapped, clean) and 0..<4
    /// written.
    func setup() throws -> (Volume, Reservation) {
        let volume = Volume(key: 1, id: "v", name: "v", pool: try testPool(chunks: 100), sizeBytes: 16 * chunk, createdAt: "")
        _ = try volume.plannedWrite(offset: 0, length: Int(8 * chunk))
        let range = Reservation(id: "r", name: nil, volume: volume, kind: .range(firstChunk: 0), chunkCount: 8)
        for chunk in UInt64(4)..<8 { range.markUnwritten(chunk) }
        volume.reservations.append(range)
        return (volume, range)
    }

    func sticky(_ volume: Volume, for range: Reservation, remaining: UInt64, id: String = "c") -> Reservation {
        let sticky = Reservation(id: id, name: range.id, volume: volume, kind: .pooled, role: .copyOnWrite, chunkCount: remaining)
        sticky.setRemaining(remaining)
        volume.reservations.append(sticky)
        return sticky
    }

    @Test func without_range_reservations_nothing_is_needed() throws {
        let volume = Volume(key: 1, id: "v", name: "v", pool: try testPool(chunks: 10, prepared: false), sizeBytes: 4 * chunk, createdAt: "")
        #expect(volume.copyOnWriteNeeds(assumingAllShared: true).isEmpty)
        let plan = volume.copyOnWritePlan([], growOnly: true)
        #expect(plan.resize.isEmpty && plan.create.isEmpty && plan.release.isEmpty && plan.growth == 0)
    }

    @Test func before_a_snapshot_every_written_chunk_of_the_range_counts() throws {
        let (volume, range) = try setup()
        // Nothing is shared yet: counted one by one, nothing is needed.
        #expect(volume.copyOnWriteNeeds(assumingAllShared: false).map(\.chunks) == [0])
        // A snapshot is being taken: the 4 written chunks, not the 4 unwritten.
        let needs = volume.copyOnWriteNeeds(assumingAllShared: true)
        #expect(needs.count == 1 && needs[0].range === range && needs[0].chunks == 4)
        let plan = volume.copyOnWritePlan(needs, growOnly: true)
        #expect(plan.create.count == 1 && plan.create[0].range === range && plan.create[0].chunks == 4)
        #expect(plan.resize.isEmpty && plan.release.isEmpty && plan.growth == 4)
    }

    @Test func shared_with_several_snapshots_a_chunk_counts_once() throws {
        let (volume, _) = try setup()
        _ = Volume(snapshotOf: volume, key: 2, id: "s1", name: "s1", createdAt: "", layer: 1)
        _ = Volume(snapshotOf: volume, key: 3, id: "s2", name: "s2", createdAt: "", layer: 1)
        #expect(volume.copyOnWriteNeeds(assumingAllShared: false).map(\.chunks) == [4])
        // A copy on write makes chunk 1 the volume's own: one fewer.
        _ = try volume.plannedWrite(offset: chunk, length: Int(chunk))
        #expect(volume.copyOnWriteNeeds(assumingAllShared: false).map(\.chunks) == [3])
    }

    /// test_model (REMAP_MODEL_SEED=666330411): a failed copy owes its chunk
    /// back to the copy-on-write reservation; the need is met by what it
    /// holds, owed chunks included, or the chunk is set aside twice.
    @Test func chunks_owed_back_by_failed_copies_count_as_held() throws {
        let (volume, range) = try setup()
        let held = sticky(volume, for: range, remaining: 1)
        #expect(held.draw())
        held.owed += 1
        #expect(volume.copyOnWritePlan([(range, 1)], growOnly: true).growth == 0)
        let grow = volume.copyOnWritePlan([(range, 3)], growOnly: true)
        #expect(grow.resize.map(\.held) == [3] && grow.growth == 2)
        let shrink = volume.copyOnWritePlan([(range, 0)], growOnly: false)
        #expect(shrink.resize.map(\.held) == [0] && shrink.growth == 0)
    }

    @Test func growing_never_shrinks_and_shrinking_never_grows() throws {
        let (volume, range) = try setup()
        let held = sticky(volume, for: range, remaining: 2)
        let grow = volume.copyOnWritePlan([(range, 5)], growOnly: true)
        #expect(grow.resize.count == 1 && grow.resize[0].sticky === held && grow.resize[0].held == 5 && grow.growth == 3)
        #expect(volume.copyOnWritePlan([(range, 1)], growOnly: true).resize.isEmpty)
        let shrink = volume.copyOnWritePlan([(range, 1)], growOnly: false)
        #expect(shrink.resize.count == 1 && shrink.resize[0].held == 1 && shrink.growth == 0)
        #expect(volume.copyOnWritePlan([(range, 5)], growOnly: false).resize.isEmpty)
        // Equal: nothing to do; the plan changes nothing itself.
        let same = volume.copyOnWritePlan([(range, 2)], growOnly: true)
        #expect(same.resize.isEmpty && same.create.isEmpty && same.release.isEmpty)
        #expect(held.remaining == 2)
    }

    @Test func shrinking_creates_nothing_and_zero_needs_create_nothing() throws {
        let (volume, range) = try setup()
        #expect(volume.copyOnWritePlan([(range, 3)], growOnly: false).create.isEmpty)
        #expect(volume.copyOnWritePlan([(range, 0)], growOnly: true).create.isEmpty)
    }

    @Test func space_of_a_range_no_longer_live_is_released() throws {
        let (volume, range) = try setup()
        let held = sticky(volume, for: range, remaining: 2)
        let plan = volume.copyOnWritePlan([], growOnly: false)
        #expect(plan.release.count == 1 && plan.release[0] === held)
        // A released one is not released twice; a live range keeps its own.
        held.released = true
        #expect(volume.copyOnWritePlan([], growOnly: false).release.isEmpty)
        let other = sticky(volume, for: range, remaining: 1, id: "c2")
        #expect(volume.stickySpace(for: range) === other)
        #expect(volume.copyOnWritePlan([(range, 1)], growOnly: true).release.isEmpty)
    }

    @Test func growth_sums_creations_and_growth_across_ranges() throws {
        let (volume, range) = try setup()
        let second = Reservation(id: "r2", name: nil, volume: volume, kind: .range(firstChunk: 8), chunkCount: 8)
        volume.reservations.append(second)
        _ = sticky(volume, for: range, remaining: 1)
        let plan = volume.copyOnWritePlan([(range, 4), (second, 6)], growOnly: true)
        #expect(plan.growth == 3 + 6)
        #expect(plan.create.map(\.range.id) == ["r2"] && plan.resize.map(\.held) == [4])
    }
}
