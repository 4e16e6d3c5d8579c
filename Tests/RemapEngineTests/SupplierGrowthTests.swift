import Foundation
import Glibc
import RemapCore
@testable import RemapEngine
import RemapStore
import Testing

/// Growing a supplier runs on the caller's thread (it may allocate
/// gigabytes), off the engine thread that owns the supplier descriptors.
@Suite struct SupplierGrowthTests {
    /// A pool deleted while one of its suppliers is being grown closes the
    /// engine's descriptor of it, and a new pool's supplier takes the
    /// number. The growth must still reach the supplier it looked up — or
    /// nothing — never the new pool's file.
    @Test func a_pool_deleted_during_a_growth_leaves_the_next_pools_supplier_alone() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path
        let engine = try Engine(store: try MetadataStore(path: path + "/metadata.db"), supplierDirectory: path, kind: .threads)
        engine.start()
        defer { engine.stop() }
        let small: UInt64 = 1 << 20
        _ = try engine.createPool(PoolSpec(name: "a", chunkSize: 65536, suppliers: [
            .file(path: directory.path + "/a.img", sizeBytes: small, preallocate: false),
        ]))
        engine.whileGrowingSupplier = {
            do {
                try engine.deletePool(named: "a")
                _ = try engine.createPool(PoolSpec(name: "b", chunkSize: 65536, suppliers: [
                    .file(path: path + "/b.img", sizeBytes: small, preallocate: false),
                ]))
            } catch {
                Issue.record("deleting a and creating b failed: \(error)")
            }
        }
        #expect(throws: RemapError.notFound(kind: "pool", name: "a")) {
            _ = try engine.growSupplier(pool: "a", supplier: directory.path + "/a.img", to: 4 * small)
        }
        let sizeOfB = try fileSize(path + "/b.img")
        #expect(sizeOfB == small)
        #expect(try engine.poolInfo(named: "b").capacityBytes == small)
    }

    private func fileSize(_ path: String) throws -> UInt64 {
        var status = stat()
        try #require(stat(path, &status) == 0)
        return UInt64(status.st_size)
    }
}
