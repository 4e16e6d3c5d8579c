import RemapCore

/// Content streams: a snapshot read outside NBD (`GET /v1/snapshots/{id}/content`),
/// through the I/O surface.
extension Engine {
    /// Pins a snapshot for a content stream: it cannot be deleted until
    /// `endSnapshotRead`. Returns its size.
    public func beginSnapshotRead(_ reference: String) throws(RemapError) -> (id: String, sizeBytes: UInt64) {
        try call { [self] reply in
            guard let snapshot = findSnapshot(reference) else { return reply(.failure(.notFound(kind: "snapshot", name: reference))) }
            snapshotReaders[snapshot.key, default: 0] += 1
            reply(.success((snapshot.id, snapshot.sizeBytes)))
        }
    }

    public func endSnapshotRead(_ id: String) {
        post { [self] in
            guard let snapshot = snapshots[id] else { return }
            let left = (snapshotReaders[snapshot.key] ?? 1) - 1
            snapshotReaders[snapshot.key] = left > 0 ? left : nil
        }
    }

    /// Reads `length` bytes of a pinned snapshot at `offset` into `data`,
    /// which the caller owns and keeps until this returns. Blocks.
    public func readSnapshot(_ id: String, offset: UInt64, length: Int, into data: UnsafeMutableRawPointer) throws(RemapError) {
        let target = UncheckedPointer(data)
        try call { [self] (reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) in
            guard let snapshot = snapshots[id], offset <= snapshot.sizeBytes, UInt64(length) <= snapshot.sizeBytes - offset else {
                return reply(.failure(.notFound(kind: "snapshot", name: id)))
            }
            volumeIO(for: snapshot).read(offset: offset, length: length, into: target.pointer, owner: snapshot) { result in
                reply(result.map { _ in () })
            }
        }
    }
}

/// A caller-owned buffer handed to the engine thread for a blocking call.
struct UncheckedPointer: @unchecked Sendable {  // the caller blocks until the engine is done with it
    let pointer: UnsafeMutableRawPointer
    init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
}
