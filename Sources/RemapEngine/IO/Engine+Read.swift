import Glibc
import RemapCore

/// Reads on the engine thread, behind the I/O surface's `read`.
extension Engine {
    /// Reads `length` bytes of `volume` (or snapshot) at `offset` into
    /// `data` (kept alive by `owner`); `completion` gets, on the engine
    /// thread, the segments (which parts were holes) or the failure.
    func readData(_ volume: Volume, offset: UInt64, length: Int, data: UnsafeMutableRawPointer, owner: AnyObject,
                  completion: @escaping (Result<[IOSegment], RemapError>) -> Void) {
        assertEngineThread()
        // An offline pool's suppliers are not open; a degraded one still reads.
        if volume.pool.state == .offline { return completion(.failure(Self.readFailure(EIO))) }
        if let busy = chunkBeingCopied(volume, offset: offset, length: length) {
            copying[busy]!.append { [self] in  // invariant: found just above
                readData(volume, offset: offset, length: length, data: data, owner: owner, completion: completion)
            }
            return
        }
        let segments = volume.readPlan(offset: offset, length: length)
        let progress = Progress(pieces: segments.count)
        let epoch = beginIO()
        let finish = { [self] in
            endIO(epoch)
            completion(progress.failure == 0 ? .success(segments) : .failure(Self.readFailure(-progress.failure)))
        }
        for segment in segments {
            switch segment.target {
            case .zeros:
                memset(data + segment.bufferOffset, 0, segment.length)
                _ = progress.complete(0)
            case .supplier(let index, let supplierOffset):
                let fd = supplierFD(pool: volume.pool, index: index)
                suppliers.readFully(fd: fd, into: data + segment.bufferOffset, count: segment.length, offset: supplierOffset) { result in
                    _ = owner  // the buffer lives until the read completes
                    if progress.complete(result) { finish() }
                }
            }
        }
        if progress.issued() { finish() }
    }

    static func readFailure(_ error: Int32) -> RemapError {
        .io(errno: error, context: "reading the supplier")
    }
}
