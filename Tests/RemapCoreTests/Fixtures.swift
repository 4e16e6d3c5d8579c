import RemapCore

/// A pool of `chunks` chunks on one preallocated file supplier; with
/// `prepared` its chunks are ready for writes to take.
func testPool(chunks: UInt64, chunkSize: UInt64 = 64 * 1024, prepared: Bool = true) throws -> Pool {
    let pool = try Pool(name: "p", chunkSize: chunkSize, suppliers: [
        Supplier(id: "s", kind: .file, path: "/p", sizeBytes: chunks * chunkSize, preallocated: true),
    ])
    if prepared { pool.didPrepare(pool.startPreparing(Int(chunks))) }
    return pool
}
