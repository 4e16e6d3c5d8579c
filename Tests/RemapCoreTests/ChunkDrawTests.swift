import RemapCore
import Testing

/// The order in which a write's new chunks draw on reservations and free space.
@Suite struct ChunkDrawTests {
    let chunk: UInt64 = 64 * 1024

    func volume(chunks: UInt64 = 100) throws -> Volume {
        Volume(key: 1, id: "v", name: "v", pool: try testPool(chunks: chunks, prepared: false), sizeBytes: 64 * chunk, createdAt: "")
    }

    @discardableResult
    func pooled(_ volume: Volume, _ id: String, role: Reservation.Role = .plain, name: String? = nil, remaining: UInt64) -> Reservation {
        let reservation = Reservation(id: id, name: name, volume: volume, kind: .pooled, role: role, chunkCount: remaining)
        reservation.setRemaining(remaining)
        volume.reservations.append(reservation)
        return reservation
    }

    /// Draws `count` chunks the way the engine does, recording each draw.
    func drawAll(_ volume: Volume, count: Int, virtual: UInt64 = 0, copyOnWrite: Bool = false, bound: String? = nil,
                 unreserved: UInt64) -> [String] {
        var free = unreserved
        var sources: [String] = []
        for _ in 0..<count {
            switch ChunkDraw.next(for: volume, virtual: virtual, copyOnWrite: copyOnWrite, drawOn: volume.drawOrder(bound: bound),
                                  unreservedFreeChunks: free, metadataShort: false) {
            case .reservation(let reservation):
                #expect(reservation.draw())
                sources.append(reservation.id)
            case .unreserved:
                free -= 1
                sources.append("free")
            case .none:
                sources.append("none")
            }
        }
        return sources
    }

    @Test func without_reservations_writes_take_free_space_then_run_out() throws {
        let volume = try volume()
        #expect(volume.drawOrder(bound: nil).isEmpty)
        #expect(drawAll(volume, count: 3, unreserved: 2) == ["free", "free", "none"])
        #expect(drawAll(volume, count: 1, unreserved: 0) == ["none"])
    }

    @Test func the_bound_reservation_comes_before_the_default_then_free_space() throws {
        let volume = try volume()
        pooled(volume, "d", role: .volumeDefault, remaining: 1)
        pooled(volume, "b", remaining: 2)
        pooled(volume, "other", remaining: 5)  // neither bound nor default: never drawn
        #expect(volume.drawOrder(bound: "b").map(\.id) == ["b", "d"])
        #expect(volume.drawOrder(bound: "missing").map(\.id) == ["d"])
        // Running out part-way: each account is spent in turn, then nothing.
        #expect(drawAll(volume, count: 5, bound: "b", unreserved: 1) == ["b", "b", "d", "free", "none"])
    }

    @Test func released_and_spent_reservations_are_skipped() throws {
        let volume = try volume()
        pooled(volume, "d", role: .volumeDefault, remaining: 0)
        pooled(volume, "b", remaining: 3).released = true
        #expect(drawAll(volume, count: 2, bound: "b", unreserved: 1) == ["free", "none"])
    }

    @Test func a_range_reservation_is_never_drawn_on() throws {
        let volume = try volume()
        let range = Reservation(id: "r", name: nil, volume: volume, kind: .range(firstChunk: 0), chunkCount: 4)
        range.markUnwritten(0)
        volume.reservations.append(range)
        #expect(volume.drawOrder(bound: "r").isEmpty)
    }

    @Test func copy_on_write_inside_a_range_draws_first_on_its_sticky_space() throws {
        let volume = try volume()
        let range = Reservation(id: "r", name: nil, volume: volume, kind: .range(firstChunk: 4), chunkCount: 4)
        volume.reservations.append(range)
        pooled(volume, "d", role: .volumeDefault, remaining: 1)
        pooled(volume, "cow", role: .copyOnWrite, name: "r", remaining: 2)
        #expect(volume.copyOnWriteReservations(covering: 5).map(\.id) == ["cow"])
        #expect(volume.copyOnWriteReservations(covering: 3).isEmpty)
        // Outside the range, or not a copy: the sticky space is not touched.
        #expect(drawAll(volume, count: 1, virtual: 3, copyOnWrite: true, unreserved: 0) == ["d"])
        #expect(drawAll(volume, count: 1, virtual: 5, copyOnWrite: false, unreserved: 1) == ["free"])
        // A copy inside it: sticky first, then the rest of the order.
        #expect(drawAll(volume, count: 4, virtual: 5, copyOnWrite: true, unreserved: 1) == ["cow", "cow", "free", "none"])
    }

    @Test func sticky_space_of_a_released_range_is_not_drawn() throws {
        let volume = try volume()
        let range = Reservation(id: "r", name: nil, volume: volume, kind: .range(firstChunk: 0), chunkCount: 4)
        range.released = true
        volume.reservations.append(range)
        pooled(volume, "cow", role: .copyOnWrite, name: "r", remaining: 2)
        #expect(volume.copyOnWriteReservations(covering: 1).isEmpty)
        #expect(drawAll(volume, count: 1, virtual: 1, copyOnWrite: true, unreserved: 0) == ["none"])
    }

    @Test func short_metadata_takes_no_new_chunk_at_all() throws {
        let volume = try volume()
        pooled(volume, "d", role: .volumeDefault, remaining: 3)
        #expect(ChunkDraw.next(for: volume, virtual: 0, copyOnWrite: false, drawOn: volume.drawOrder(bound: nil),
                               unreservedFreeChunks: 10, metadataShort: true) == .none)
    }
}
