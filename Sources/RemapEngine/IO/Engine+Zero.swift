import Glibc
import RemapCore

/// Zeroing a range of a volume on the engine thread: the surface's `zero`
/// (NBD TRIM and WRITE_ZEROES).
extension Engine {
    /// Bytes of zeros written into shared chunks at once by one request.
    static let zeroWriteWindowBytes = 32 << 20

    /// Makes the range read zeros (see `VolumeIO.zero`). Whole chunks are
    /// unmapped (freed after the next commit) when `mayTrim` and not
    /// `noHole`; with `noHole`, holes are mapped to clean chunks instead;
    /// parts of mapped chunks are zeroed on the supplier.
    func zeroData(_ volume: Volume, offset: UInt64, length: Int, mayTrim: Bool, noHole: Bool, fastZero: Bool, fua: Bool,
                  bound: String?, completion: @escaping (Result<Void, RemapError>) -> Void) {
        let request = ZeroRequest(offset: offset, length: length, unmapWhole: mayTrim && !noHole, keepAllocated: noHole,
                                  fast: fastZero, fua: fua, bound: bound)
        whenWritable(volume) { [self] in
            beginVolumeWrite(volume)
            planZero(volume, request, deadline: nil, completion: completion)
        }
    }

    /// What a zeroing asks, carried through its retries.
    struct ZeroRequest {
        var offset: UInt64
        var length: Int
        /// Whole chunks are unmapped rather than zeroed.
        var unmapWhole: Bool
        /// Holes get clean chunks; nothing is unmapped or punched.
        var keepAllocated: Bool
        var fast: Bool
        var fua: Bool
        var bound: String?
    }

    /// Runs with the volume's write counted (`beginVolumeWrite`); ends it on
    /// every way out.
    private func planZero(_ volume: Volume, _ request: ZeroRequest, deadline: Int64?,
                          completion: @escaping (Result<Void, RemapError>) -> Void) {
        assertEngineThread()
        if let refusal = ioRefusal(volume.pool) {
            endVolumeWrite(volume)
            return completion(.failure(refusal))
        }
        if let busy = chunkBeingCopied(volume, offset: request.offset, length: request.length) {
            copying[busy]!.append { [self] in  // invariant: found just above
                planZero(volume, request, deadline: deadline, completion: completion)
            }
            return
        }
        let keepAllocated = request.keepAllocated
        var pieces = volume.zeroPlan(offset: request.offset, length: request.length)
        // A chunk shared with a snapshot or clone is never zeroed in place:
        // unmapped whole (the others keep it), else written with zeros,
        // which copies it on write.
        var zeroWrites: [ZeroPiece] = []
        if volume.family.members.count > 1 {
            pieces.removeAll { piece in
                guard let physical = piece.physicalChunk, volume.isShared(piece.virtualChunk, physical) else { return false }
                let reserved = volume.rangeReservation(covering: piece.virtualChunk) != nil
                if piece.whole && request.unmapWhole && !reserved { return false }
                zeroWrites.append(piece)
                return true
            }
        }
        var source: WriteChunks?
        if keepAllocated {
            // Holes get clean (prepared) chunks: mapping them is all it takes.
            let holes = pieces.filter { $0.physicalChunk == nil }
            let chunks = chunkSource(for: volume, bound: request.bound)
            var taken: [UInt64] = []
            for hole in holes {
                guard let chunk = chunks.take(for: hole.virtualChunk, copyOnWrite: false) else {
                    for chunk in taken.reversed() { chunks.giveBack(chunk) }
                    endVolumeWrite(volume)
                    let pool = volume.pool
                    return noChunk(
                        for: volume, offset: request.offset, source: chunks, deadline: deadline,
                        noSpace: .noSpace(requestedBytes: UInt64(holes.count) * pool.chunkSize, availableBytes: pool.freeBytes),
                        retry: { [self] deadline in
                            whenWritable(volume) { [self] in
                                beginVolumeWrite(volume)
                                planZero(volume, request, deadline: deadline, completion: completion)
                            }
                        },
                        fail: { completion(.failure($0)) })
                }
                taken.append(chunk)
            }
            for (hole, chunk) in zip(holes, taken) { mapCleanChunk(volume, hole.virtualChunk, to: chunk) }
            beginDrawing(chunks)
            source = chunks
        }
        var ranges: [(fd: Int32, offset: UInt64, length: UInt64, punch: Bool, rereserve: (UInt64, UInt64)?)] = []
        for piece in pieces {
            guard let physical = piece.physicalChunk else { continue }
            // Inside a live range reservation the chunk stays backed: zeroed
            // and reserved-unwritten again, never unmapped.
            let reserved = volume.rangeReservation(covering: piece.virtualChunk) != nil
            if piece.whole && request.unmapWhole && !reserved {
                unmapChunk(volume, piece.virtualChunk)
                continue
            }
            let location = volume.pool.location(of: physical)
            let supplier = volume.pool.suppliers[location.supplier]
            ranges.append((supplierFD(pool: volume.pool, index: location.supplier),
                           location.offset + piece.offsetInChunk, piece.length,
                           !keepAllocated && !reserved && supplier.kind == .file && !supplier.preallocated,
                           piece.whole && reserved && !keepAllocated ? (piece.virtualChunk, physical) : nil))
        }
        let progress = Progress(pieces: ranges.count + zeroWrites.count)
        let epoch = beginIO()
        let finish = { [self] in
            endIO(epoch)
            endVolumeWrite(volume)
            if let source { endDrawing(source) }
            switch progress.failure {
            case 0:
                if request.fua { return flush(volume, completion) }
                completion(.success(()))
            case -ENOSPC:
                completion(.failure(.noSpace(requestedBytes: UInt64(request.length), availableBytes: volume.pool.freeBytes)))
            case -EOPNOTSUPP:
                completion(.failure(.io(errno: EOPNOTSUPP, context: "the supplier cannot zero quickly")))
            default:
                // The device failed to zero what the client asked: its pool degrades.
                let error = -progress.failure
                if let fd = progress.failedFD { supplierFailed(fd: fd, errno: error, during: "zeroing") }
                completion(.failure(.io(errno: error, context: "zeroing the supplier failed: \(String(cString: strerror(error)))")))
            }
        }
        for range in ranges {
            zeroSupplier(fd: range.fd, offset: range.offset, length: range.length, punch: range.punch, fast: request.fast) { [self] result in
                if result >= 0, let (virtual, physical) = range.rereserve {
                    reserveAgain(volume, virtual, physical)
                }
                if progress.complete(result, fd: range.fd) { finish() }
            }
        }
        // Shared chunks get zeros written (copied on write): a window at a
        // time, as each copy holds a chunk-sized buffer and one request may
        // span 4 GiB of them. A loop, not recursion: a write can complete
        // at once (a refused one), and there may be 65,536 of them.
        var next = 0
        var room = max(1, Self.zeroWriteWindowBytes / Int(volume.pool.chunkSize))
        var issuing = false
        func writeZeros() {
            guard !issuing else { return }
            issuing = true
            defer { issuing = false }
            while room > 0 && next < zeroWrites.count {
                let piece = zeroWrites[next]
                next += 1
                room -= 1
                let zeros = Engine.zeros(count: Int(piece.length))
                let offset = piece.virtualChunk * volume.pool.chunkSize + piece.offsetInChunk
                planWrite(volume, offset: offset, length: Int(piece.length), data: zeros.pointer, owner: zeros,
                          bound: request.bound, deadline: deadline) { result in
                    let code: Int32
                    switch result {
                    case .success: code = 0
                    case .failure(.noSpace): code = -ENOSPC
                    case .failure(let error): code = -(error.errno ?? EIO)
                    }
                    if progress.complete(code) { return finish() }
                    room += 1
                    writeZeros()
                }
            }
        }
        writeZeros()
        if progress.issued() { finish() }
    }
}
