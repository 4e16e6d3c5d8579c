import RemapCore
import Testing

@Suite struct PoolAndVolumeTests {
    let chunk: UInt64 = 64 * 1024

    func pool(chunks: UInt64, suppliers: Int = 1) throws -> Pool {
        let each = (0..<suppliers).map {
            Supplier(id: "s\($0)", kind: .file, path: "/p/\($0)", sizeBytes: chunks * chunk, preallocated: true)
        }
        let pool = try Pool(name: "p", chunkSize: chunk, suppliers: each)
        // Writes draw on prepared chunks; prepare them all.
        pool.didPrepare(pool.startPreparing(Int(chunks) * suppliers))
        return pool
    }

    @Test func accounting_identity_holds_through_writes_and_frees() throws {
        let pool = try pool(chunks: 100)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 1 << 30, createdAt: "")
        #expect(pool.capacityBytes == 100 * chunk)
        _ = try volume.writePlan(offset: 0, length: Int(3 * chunk))
        _ = try volume.writePlan(offset: chunk / 2, length: 10)  // overwrite: no new chunk
        #expect(pool.allocatedBytes == 3 * chunk)
        #expect(volume.allocatedBytes == 3 * chunk)
        #expect(pool.allocatedBytes + pool.freeBytes == pool.capacityBytes)
    }

    @Test func unaligned_write_maps_every_chunk_it_touches() throws {
        let pool = try pool(chunks: 100)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 1 << 30, createdAt: "")
        let (segments, fresh) = try volume.writePlan(offset: chunk - 512, length: Int(chunk) + 1024)
        #expect(fresh.map(\.virtualChunk) == [0, 1, 2])
        // Fresh chunks are contiguous, so the three pieces merge into one I/O.
        #expect(segments == [IOSegment(bufferOffset: 0, length: Int(chunk) + 1024, target: .supplier(index: 0, offset: chunk - 512))])
    }

    @Test func read_plan_reports_holes_as_zeros() throws {
        let pool = try pool(chunks: 100)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 1 << 30, createdAt: "")
        _ = try volume.writePlan(offset: chunk, length: Int(chunk))
        let plan = volume.readPlan(offset: 0, length: Int(3 * chunk))
        #expect(plan == [
            IOSegment(bufferOffset: 0, length: Int(chunk), target: .zeros),
            IOSegment(bufferOffset: Int(chunk), length: Int(chunk), target: .supplier(index: 0, offset: 0)),
            IOSegment(bufferOffset: Int(2 * chunk), length: Int(chunk), target: .zeros),
        ])
    }

    @Test func out_of_space_fails_at_once_and_leaves_nothing_allocated() throws {
        let pool = try pool(chunks: 4)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 1 << 30, createdAt: "")
        _ = try volume.writePlan(offset: 0, length: Int(2 * chunk))
        #expect(throws: RemapError.self) { _ = try volume.writePlan(offset: 10 * chunk, length: Int(3 * chunk)) }
        #expect(pool.allocatedBytes == 2 * chunk)
        #expect(volume.map.mappedCount == 2)
        // Overwrites of allocated chunks still work when the pool is full.
        _ = try volume.writePlan(offset: 20 * chunk, length: Int(2 * chunk))
        _ = try volume.writePlan(offset: 0, length: 100)
        #expect(pool.freeBytes == 0)
    }

    @Test func chunks_span_suppliers() throws {
        let pool = try pool(chunks: 2, suppliers: 2)
        #expect(pool.location(of: 0) == (0, 0))
        #expect(pool.location(of: 3) == (1, chunk))
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 1 << 20, createdAt: "")
        let (segments, _) = try volume.writePlan(offset: 0, length: Int(4 * chunk))
        #expect(segments.count == 2)  // not merged across suppliers
    }

    @Test func prepared_chunks_count_as_free_until_written() throws {
        let pool = try Pool(name: "p", chunkSize: chunk, suppliers: [
            Supplier(id: "s", kind: .file, path: "/p", sizeBytes: 10 * chunk, preallocated: true),
        ])
        let taken = pool.startPreparing(4)
        #expect(taken.count == 4 && pool.freeBytes == 10 * chunk && pool.allocatedBytes == 0)
        #expect(pool.takeChunk() == nil)  // not durable yet
        pool.didPrepare(taken)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 1 << 20, createdAt: "")
        _ = try volume.writePlan(offset: 0, length: Int(2 * chunk))
        #expect(pool.allocatedBytes == 2 * chunk && pool.freeBytes == 8 * chunk && pool.preparedCount == 2)
        // A failed plan gives its chunks back to the stash.
        #expect(throws: RemapError.self) { _ = try volume.writePlan(offset: 4 * chunk, length: Int(3 * chunk)) }
        #expect(pool.preparedCount == 2 && pool.allocatedBytes == 2 * chunk)
    }

    @Test func zero_plan_and_allocation_runs() throws {
        let pool = try pool(chunks: 100)
        let volume = Volume(key: 1, id: "v", name: "v", pool: pool, sizeBytes: 10 * chunk + 512, createdAt: "")
        _ = try volume.writePlan(offset: chunk, length: Int(2 * chunk))
        let pieces = volume.zeroPlan(offset: chunk / 2, length: Int(2 * chunk))
        #expect(pieces.map(\.whole) == [false, true, false])
        #expect(pieces.map { $0.physicalChunk != nil } == [false, true, true])
        // The short last chunk counts as whole when the range runs to the end.
        #expect(volume.zeroPlan(offset: 10 * chunk, length: 512).map(\.whole) == [true])
        let runs = volume.allocationRuns(offset: 0, length: 10 * chunk + 512, maximumRuns: 10)
        #expect(runs.map(\.length) == [chunk, 2 * chunk, 7 * chunk + 512])
        #expect(runs.map(\.mapped) == [false, true, false])
        #expect(volume.allocationRuns(offset: 0, length: 4 * chunk, maximumRuns: 1).map(\.length) == [chunk])
    }

    @Test(arguments: [UInt64(0), 1000, 513])
    func rejects_bad_volume_sizes(size: UInt64) {
        #expect(throws: RemapError.self) { try Volume.validate(sizeBytes: size) }
    }

    @Test(arguments: [UInt64(1024), 3 << 16, 8 << 20])
    func rejects_bad_chunk_sizes(size: UInt64) {
        #expect(throws: RemapError.self) { _ = try Pool(name: "p", chunkSize: size, suppliers: []) }
    }
}

@Suite struct PoolStateTests {
    func pool() throws -> Pool {
        let suppliers = (0..<2).map {
            Supplier(id: "s\($0)", kind: .file, path: "/p/\($0)", sizeBytes: 1 << 20, preallocated: true)
        }
        return try Pool(name: "p", chunkSize: 64 * 1024, suppliers: suppliers)
    }

    @Test func a_failed_supplier_degrades_the_pool_until_cleared_and_keeps_its_first_cause() throws {
        let pool = try pool()
        #expect(pool.state == .online && pool.stateReason == nil)
        #expect(pool.recordFault(SupplierFault(kind: .failed, message: "write-back failed"), supplier: 1))
        #expect(pool.state == .degraded)
        #expect(!pool.recordFault(SupplierFault(kind: .failed, message: "a later write failed"), supplier: 1))
        #expect(pool.stateReason == "write-back failed")
        let info = pool.info(volumes: [])
        #expect(info.state == .degraded)
        #expect(info.suppliers.map(\.state) == ["ok", "failed"])
        #expect(info.suppliers[1].error == "write-back failed")
        pool.clearFaults()
        #expect(pool.state == .online)
        #expect(pool.info(volumes: []).suppliers.allSatisfy { $0.state == "ok" && $0.error == nil })
    }

    @Test func a_missing_supplier_makes_the_pool_offline() throws {
        let pool = try pool()
        pool.recordFault(SupplierFault(kind: .failed, message: "write-back failed"), supplier: 0)
        #expect(pool.recordFault(SupplierFault(kind: .missing, message: "no such file"), supplier: 1))
        #expect(pool.state == .offline)
        #expect(pool.stateReason == "write-back failed; no such file")
    }
}
