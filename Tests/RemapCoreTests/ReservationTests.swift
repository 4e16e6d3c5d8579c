import RemapCore
import Testing

@Suite struct ReservationTests {
    let chunk: UInt64 = 64 * 1024

    func setup(chunks: UInt64) throws -> (Pool, Volume) {
        let pool = try Pool(name: "p", chunkSize: chunk, suppliers: [
            Supplier(id: "s", kind: .file, path: "/p", sizeBytes: chunks * chunk, preallocated: true),
        ])
        pool.didPrepare(pool.startPreparing(Int(chunks)))
        return (pool, Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 1 << 30, createdAt: ""))
    }

    func identityHolds(_ pool: Pool) -> Bool {
        pool.capacityBytes == pool.allocatedBytes + pool.reservedBytes + pool.freeBytes
    }

    @Test func pooled_reservations_hold_space_against_uncovered_writes() throws {
        let (pool, volume) = try setup(chunks: 10)
        let reservation = Reservation(id: "r", name: nil, volume: volume, kind: .pooled, chunkCount: 6)
        reservation.setRemaining(6)
        pool.pooledReservedChunks += 6
        volume.reservations.append(reservation)
        #expect(pool.freeBytes == 4 * chunk && pool.reservedBytes == 6 * chunk && identityHolds(pool))
        // Uncovered writes get the 4 free chunks, then ENOSPC.
        _ = try volume.writePlan(offset: 0, length: Int(4 * chunk))
        #expect(throws: RemapError.self) { _ = try volume.writePlan(offset: 8 * chunk, length: 1) }
        #expect(identityHolds(pool) && pool.allocatedBytes == 4 * chunk)
        #expect(volume.guaranteedWritableBytes == 10 * chunk)
    }

    /// test_model's faults walk found a copy-on-write reservation holding
    /// two chunks for a range of one: its need was set against `remaining`
    /// while a failed copy's chunk was still owed back to it.
    @Test func holding_counts_the_chunks_owed_back() throws {
        let (_, volume) = try setup(chunks: 10)
        let sticky = Reservation(id: "c", name: "r", volume: volume, kind: .pooled, role: .copyOnWrite, chunkCount: 1)
        sticky.setRemaining(1)
        #expect(sticky.draw())
        sticky.owed += 1  // the copy failed: the chunk comes back once zeroed
        #expect(sticky.held == 1 && sticky.durableRemaining == 1)
        #expect(sticky.hold(1) == 0)
        #expect(sticky.remaining == 0 && sticky.durableRemaining == 1)
        // Growing adds only what is missing.
        #expect(sticky.hold(3) == 2)
        #expect(sticky.remaining == 2 && sticky.owed == 1 && sticky.held == 3)
        // Shrinking lowers what is left first, then what is owed.
        #expect(sticky.hold(1) == -2)
        #expect(sticky.remaining == 0 && sticky.owed == 1)
        #expect(sticky.hold(0) == 0)
        #expect(sticky.remaining == 0 && sticky.owed == 0 && sticky.durableRemaining == 0)
    }

    @Test func range_reservations_track_unwritten_chunks() throws {
        let (_, volume) = try setup(chunks: 10)
        let reservation = Reservation(id: "r", name: nil, volume: volume, kind: .range(firstChunk: 2), chunkCount: 3)
        for chunk in UInt64(2)...4 { reservation.markUnwritten(chunk) }
        #expect(reservation.remaining == 3 && reservation.usedBytes == 0)
        reservation.markWritten(3)
        #expect(reservation.remaining == 2 && reservation.usedBytes == chunk)
        #expect(reservation.unwrittenChunks == [2, 4])
        #expect(!reservation.isUnwritten(3) && reservation.isUnwritten(4) && !reservation.isUnwritten(5))
        reservation.resizeRange(chunkCount: 2)
        #expect(reservation.unwrittenChunks == [2] && reservation.remaining == 1)
    }

    @Test func grown_suppliers_keep_chunk_numbers_stable() throws {
        let pool = try Pool(name: "p", chunkSize: chunk, suppliers: [
            Supplier(id: "a", kind: .file, path: "/a", sizeBytes: 4 * chunk, preallocated: true),
            Supplier(id: "b", kind: .file, path: "/b", sizeBytes: 4 * chunk, preallocated: true),
        ])
        let segment = try pool.grow(supplier: 0, to: 6 * chunk)
        #expect(segment == Pool.Segment(firstChunk: 8, supplier: 0, supplierOffset: 4 * chunk, chunks: 2))
        #expect(pool.location(of: 5) == (1, chunk))       // b's chunks did not move
        #expect(pool.location(of: 9) == (0, 5 * chunk))   // a's new tail
        #expect(pool.capacityBytes == 10 * chunk)
        #expect(try pool.grow(supplier: 1, to: 4 * chunk + 100) == nil)  // less than a chunk more
    }

    @Test func timestamps_are_rfc3339_utc() {
        #expect(utcTimestamp(unixSeconds: 0) == "1970-01-01T00:00:00Z")
        #expect(utcTimestamp(unixSeconds: 1_795_634_379) == "2026-11-25T19:19:39Z")
        #expect(utcTimestamp(unixSeconds: 951_782_400) == "2000-02-29T00:00:00Z")
    }

    /// Found by the model test: bytes a kill -9 before the commit left in a
    /// reserved-unwritten chunk were read by the volume, while a snapshot or
    /// a release of the reservation read zeros there.
    @Test func unwritten_chunks_read_zeros_and_the_first_write_fills_one_that_may_hold_bytes() throws {
        let (pool, volume) = try setup(chunks: 10)
        let reservation = Reservation(id: "r", name: nil, volume: volume, kind: .range(firstChunk: 0), chunkCount: 3)
        volume.reservations.append(reservation)
        for virtual in UInt64(0)..<3 {
            volume.map.map(virtual, to: pool.takeCleanChunk()!)
            reservation.markUnwritten(virtual, clean: virtual == 2)  // as loaded after a crash, but chunk 2
        }
        #expect(reservation.mayHoldData(0) && !reservation.mayHoldData(2))
        // A clean unwritten chunk is written in place.
        let clean = try volume.plannedWrite(offset: 2 * chunk + 10, length: 10)
        #expect(clean.fills.isEmpty && clean.segments.count == 1)
        #expect(volume.readPlan(offset: 0, length: Int(2 * chunk)) == [IOSegment(bufferOffset: 0, length: Int(2 * chunk), target: .zeros)])
        // Part of chunk 0 and all of chunk 1.
        let plan = try volume.plannedWrite(offset: 100, length: Int(2 * chunk - 100))
        #expect(plan.newMappings.isEmpty && plan.copies.isEmpty)
        #expect(plan.fills == [
            ChunkFill(virtualChunk: 0, physicalChunk: volume.map.lookup(0)!, bufferOffset: 0, length: Int(chunk - 100),
                      offsetInChunk: 100, whole: false),
            ChunkFill(virtualChunk: 1, physicalChunk: volume.map.lookup(1)!, bufferOffset: Int(chunk - 100),
                      length: Int(chunk), offsetInChunk: 0, whole: true),
        ])
        #expect(plan.segments.isEmpty)
        reservation.markWritten(0)
        #expect(!reservation.mayHoldData(0))
        let location = pool.location(of: volume.map.lookup(0)!)
        #expect(volume.readPlan(offset: 0, length: 10)
            == [IOSegment(bufferOffset: 0, length: 10, target: .supplier(index: 0, offset: location.offset))])
        // A written chunk is written in place again.
        #expect(try volume.plannedWrite(offset: 10, length: 10).fills.isEmpty)
    }
}
