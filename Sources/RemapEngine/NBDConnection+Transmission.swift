import Glibc
import RemapCore

/// The transmission phase: every command, with simple or structured replies.
extension NBDConnection {
    func handleRequest(_ request: NBDRequest) {
        let started = monotonicNanoseconds()
        guard let volume = export else { return protocolError("request before export") }  // unreachable by phase
        let command = NBD.Command(rawValue: request.type)
        if command == .disconnect { return endInput() }
        requestsInFlight += 1
        let length = Int(request.length)
        let inRange = request.offset <= volume.sizeBytes && UInt64(request.length) <= volume.sizeBytes - request.offset
        let flags = request.flags
        func refuse(_ error: NBD.Error, _ message: String) {
            if command == .write && length > 0 {
                // Skip the payload first, then answer: the stream stays in sync.
                discarding = length
                refusal = (request, started, error, message)
                return
            }
            reply(request, started, error: error, message: message)
        }
        let allowed: UInt16
        switch command {
        case .read: allowed = NBD.commandFUA | (structuredReplies ? NBD.commandDF : 0)
        case .write, .trim, .cache, .flush: allowed = NBD.commandFUA
        case .writeZeroes: allowed = NBD.commandFUA | NBD.commandNoHole | NBD.commandFastZero
        case .blockStatus: allowed = NBD.commandFUA | NBD.commandReqOne
        default: return refuse(.invalid, "unknown command \(request.type)")
        }
        guard flags & ~allowed == 0 else { return refuse(.invalid, "flags \(flags) are not valid for this command") }
        if command == .flush {
            return engine.flush(volume) { [self] result in reply(request, started, error: result.nbdError, message: result.failureMessage) }
        }
        if readOnly && (command == .write || command == .trim || command == .writeZeroes) {
            return refuse(.permission, "export '\(volume.exportName)' is read-only")
        }
        guard length > 0 else { return refuse(.invalid, "length must not be 0") }
        guard inRange else {
            return refuse(.invalid, "range \(request.offset)+\(length) ends beyond the export's \(volume.sizeBytes) bytes")
        }
        switch command {
        case .read:
            guard length <= NBD.maximumPayload else { return refuse(.invalid, "reads are limited to \(NBD.maximumPayload) bytes") }
            read(request, volume, started)
        case .write:
            guard length <= NBD.maximumPayload else { return refuse(.invalid, "writes are limited to \(NBD.maximumPayload) bytes") }
            let buffer = IOBuffer(count: length)
            hold(length)
            let ready = takeInput(into: buffer.pointer, count: length)
            if ready == length {
                write(request, buffer, started)
            } else {
                let pending = Payload(request: request, buffer: buffer, started: started)
                pending.filled = ready
                payload = pending
            }
        case .trim, .writeZeroes:
            let keep = command == .writeZeroes && flags & NBD.commandNoHole != 0
            engine.whenWritable(volume) { [self] in
                engine.beginVolumeWrite(volume)
                zero(request, volume, started, keepAllocated: keep)
            }
        case .cache:
            reply(request, started, error: nil)  // data is read from the suppliers on demand
        case .blockStatus:
            blockStatus(request, volume, started)
        default:
            refuse(.invalid, "unknown command \(request.type)")
        }
    }

    // MARK: - READ

    /// Room before the data for the largest header (structured: 20 + 8).
    private static let headroom = 32

    private func read(_ request: NBDRequest, _ volume: Volume, _ started: Int64) {
        let length = Int(request.length)
        // The data starts after the headroom: aligning the buffer would only
        // waste most of a page per small read.
        let buffer = IOBuffer(count: Self.headroom + length, pageAligned: false)
        hold(length)
        engine.readData(volume, offset: request.offset, length: length, data: buffer.pointer + Self.headroom,
                        owner: buffer) { [self] failure, segments in
            if failure != 0 {
                release(length)
                return reply(request, started, error: .io, message: "reading the supplier failed")
            }
            if structuredReplies {
                sendStructuredRead(request, buffer, segments, dontFragment: request.flags & NBD.commandDF != 0)
            } else {
                encodeSimpleReply(into: buffer.pointer + Self.headroom - NBD.simpleReplyHeaderSize, error: 0, cookie: request.cookie)
                send(buffer, offset: Self.headroom - NBD.simpleReplyHeaderSize, count: NBD.simpleReplyHeaderSize + length)
            }
            release(length)  // counted in the reply queue now
            engine.record(command: "read", bytes: length, error: nil, started: started)
            answered()
        }
    }

    /// A READ's structured reply: holes as OFFSET_HOLE and data as
    /// OFFSET_DATA chunks, or one OFFSET_DATA when the client said DF.
    private func sendStructuredRead(_ request: NBDRequest, _ buffer: IOBuffer, _ segments: [IOSegment], dontFragment: Bool) {
        let length = Int(request.length)
        var pieces: [(offset: Int, length: Int, hole: Bool)] = []
        if dontFragment {
            pieces = [(0, length, false)]
        } else {
            for segment in segments {
                let hole = segment.target == .zeros
                if let last = pieces.last, last.hole == hole {
                    pieces[pieces.count - 1].length += segment.length
                } else {
                    pieces.append((segment.bufferOffset, segment.length, hole))
                }
            }
        }
        for (index, piece) in pieces.enumerated() {
            let flags = index == pieces.count - 1 ? NBD.replyFlagDone : 0
            let offset = request.offset + UInt64(piece.offset)
            if piece.hole {
                var chunk = WireWriter()
                chunk.u32(NBD.structuredReplyMagic)
                chunk.u16(flags)
                chunk.u16(NBD.ReplyType.offsetHole.rawValue)
                chunk.u64(request.cookie)
                chunk.u32(12)
                chunk.u64(offset)
                chunk.u32(UInt32(piece.length))
                send(chunk.bytes)
            } else if piece.offset == 0 {
                // The header goes in the buffer's headroom: one contiguous send.
                let header = buffer.pointer + Self.headroom - NBD.structuredHeaderSize - 8
                encodeStructuredHeader(into: header, flags: flags, type: .offsetData, cookie: request.cookie, length: UInt32(8 + piece.length))
                header.storeBytes(of: offset.bigEndian, toByteOffset: NBD.structuredHeaderSize, as: UInt64.self)
                send(buffer, offset: Self.headroom - NBD.structuredHeaderSize - 8, count: NBD.structuredHeaderSize + 8 + piece.length)
            } else {
                let header = IOBuffer(count: NBD.structuredHeaderSize + 8)
                encodeStructuredHeader(into: header.pointer, flags: flags, type: .offsetData, cookie: request.cookie, length: UInt32(8 + piece.length))
                header.pointer.storeBytes(of: offset.bigEndian, toByteOffset: NBD.structuredHeaderSize, as: UInt64.self)
                send(header, count: header.count)
                send(buffer, offset: Self.headroom + piece.offset, count: piece.length)
            }
        }
    }

    // MARK: - WRITE

    func write(_ request: NBDRequest, _ buffer: IOBuffer, _ started: Int64) {
        guard let volume = export else { return }
        engine.writeData(volume, offset: request.offset, length: Int(request.length), data: buffer.pointer, owner: buffer,
                         bound: boundReservation) { [self] result in
            release(Int(request.length))
            switch result {
            case .success:
                completeWithFUA(request, started)
            case .failure(.noSpace):
                reply(request, started, error: .noSpace, message: "no space left in pool '\(volume.pool.name)'")
            case .failure(let error):
                reply(request, started, error: error.nbdError, message: error.description)
            }
        }
    }

    /// Replies success, after a flush when the request carried FUA.
    private func completeWithFUA(_ request: NBDRequest, _ started: Int64) {
        if request.flags & NBD.commandFUA != 0, let volume = export {
            engine.flush(volume) { [self] result in reply(request, started, error: result.nbdError, message: result.failureMessage) }
        } else {
            reply(request, started, error: nil)
        }
    }

    // MARK: - TRIM and WRITE_ZEROES

    /// Makes the range read zeros. Whole chunks are unmapped (freed after
    /// the next commit) unless `keepAllocated` (NO_HOLE), which instead
    /// maps holes to clean chunks; parts of mapped chunks are zeroed on the
    /// supplier.
    /// Bytes of zeros written into shared chunks at once by one request.
    static let zeroWriteWindowBytes = 32 << 20

    private func zero(_ request: NBDRequest, _ volume: Volume, _ started: Int64, keepAllocated: Bool, deadline: Int64? = nil) {
        if let refusal = engine.ioRefusal(volume.pool) {
            engine.endVolumeWrite(volume)
            return reply(request, started, error: .io, message: refusal.description)
        }
        if let busy = engine.chunkBeingCopied(volume, offset: request.offset, length: Int(request.length)) {
            engine.copying[busy]!.append { [self] in  // invariant: found just above
                zero(request, volume, started, keepAllocated: keepAllocated, deadline: deadline)
            }
            return
        }
        var pieces = volume.zeroPlan(offset: request.offset, length: Int(request.length))
        // A chunk shared with a snapshot or clone is never zeroed in place:
        // unmapped whole (the others keep it), else written with zeros,
        // which copies it on write.
        var zeroWrites: [ZeroPiece] = []
        if volume.family.members.count > 1 {
            pieces.removeAll { piece in
                guard let physical = piece.physicalChunk, volume.isShared(piece.virtualChunk, physical) else { return false }
                let reserved = volume.rangeReservation(covering: piece.virtualChunk) != nil
                if piece.whole && !keepAllocated && !reserved { return false }
                zeroWrites.append(piece)
                return true
            }
        }
        var source: Engine.WriteChunks?
        if keepAllocated {
            // Holes get clean (prepared) chunks: mapping them is all it takes.
            let holes = pieces.filter { $0.physicalChunk == nil }
            let chunks = engine.chunkSource(for: volume, bound: boundReservation)
            var taken: [UInt64] = []
            for hole in holes {
                guard let chunk = chunks.take(for: hole.virtualChunk, copyOnWrite: false) else {
                    for chunk in taken.reversed() { chunks.giveBack(chunk) }
                    engine.endVolumeWrite(volume)
                    return engine.noChunk(
                        for: volume, offset: request.offset, source: chunks, deadline: deadline,
                        retry: { [self] deadline in
                            engine.whenWritable(volume) { [self] in
                                engine.beginVolumeWrite(volume)
                                zero(request, volume, started, keepAllocated: true, deadline: deadline)
                            }
                        },
                        fail: { [self] in reply(request, started, error: .noSpace, message: "no space left in pool '\(volume.pool.name)'") })
                }
                taken.append(chunk)
            }
            for (hole, chunk) in zip(holes, taken) { engine.mapCleanChunk(volume, hole.virtualChunk, to: chunk) }
            engine.beginDrawing(chunks)
            source = chunks
        }
        var ranges: [(fd: Int32, offset: UInt64, length: UInt64, punch: Bool, rereserve: (UInt64, UInt64)?)] = []
        for piece in pieces {
            guard let physical = piece.physicalChunk else { continue }
            // Inside a live range reservation the chunk stays backed: zeroed
            // and reserved-unwritten again, never unmapped.
            let reserved = volume.rangeReservation(covering: piece.virtualChunk) != nil
            if piece.whole && !keepAllocated && !reserved {
                engine.unmapChunk(volume, piece.virtualChunk)
                continue
            }
            let location = volume.pool.location(of: physical)
            let supplier = volume.pool.suppliers[location.supplier]
            ranges.append((engine.supplierFD(pool: volume.pool, index: location.supplier),
                           location.offset + piece.offsetInChunk, piece.length,
                           !keepAllocated && !reserved && supplier.kind == .file && !supplier.preallocated,
                           piece.whole && reserved && !keepAllocated ? (piece.virtualChunk, physical) : nil))
        }
        let progress = Progress(pieces: ranges.count + zeroWrites.count)
        let epoch = engine.beginIO()
        let fast = request.flags & NBD.commandFastZero != 0
        let finish = { [self] in
            engine.endIO(epoch)
            engine.endVolumeWrite(volume)
            if let source { engine.endDrawing(source) }
            if progress.failure == -ENOSPC {
                return reply(request, started, error: .noSpace, message: "no space left in pool '\(volume.pool.name)'")
            }
            if progress.failure == -EOPNOTSUPP {
                return reply(request, started, error: .notSupported, message: "the supplier cannot zero quickly")
            }
            if progress.failure != 0 {
                // The device failed to zero what the client asked: its pool degrades.
                if let fd = progress.failedFD { engine.supplierFailed(fd: fd, errno: -progress.failure, during: "zeroing") }
                return reply(request, started, error: .io, message: "zeroing the supplier failed: \(String(cString: strerror(-progress.failure)))")
            }
            completeWithFUA(request, started)
        }
        for range in ranges {
            engine.zeroSupplier(fd: range.fd, offset: range.offset, length: range.length, punch: range.punch, fast: fast) { [self] result in
                if result >= 0, let (virtual, physical) = range.rereserve {
                    engine.reserveAgain(volume, virtual, physical)
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
                engine.planWrite(volume, offset: offset, length: Int(piece.length), data: zeros.pointer, owner: zeros,
                                 bound: boundReservation, deadline: deadline) { result in
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

    // MARK: - BLOCK_STATUS

    private func blockStatus(_ request: NBDRequest, _ volume: Volume, _ started: Int64) {
        guard structuredReplies, allocationContextFor == exportName else {
            return reply(request, started, error: .invalid, message: "negotiate the base:allocation metadata context first")
        }
        let one = request.flags & NBD.commandReqOne != 0
        let runs = volume.allocationRuns(offset: request.offset, length: UInt64(request.length), maximumRuns: one ? 1 : 2048)
        var chunk = WireWriter(capacity: 24 + 8 * runs.count)
        chunk.u32(NBD.structuredReplyMagic)
        chunk.u16(NBD.replyFlagDone)
        chunk.u16(NBD.ReplyType.blockStatus.rawValue)
        chunk.u64(request.cookie)
        chunk.u32(UInt32(4 + 8 * runs.count))
        chunk.u32(NBD.allocationContextID)
        for run in runs {
            chunk.u32(UInt32(run.length))
            chunk.u32(run.mapped ? 0 : NBD.stateHole | NBD.stateZero)
        }
        send(chunk.bytes)
        engine.record(command: "block_status", bytes: 0, error: nil, started: started)
        answered()
    }

    // MARK: - Replies

    /// Answers a request without data, and counts it. With structured
    /// replies an error carries `message` for the person at the client.
    func reply(_ request: NBDRequest, _ started: Int64, error: NBD.Error?, message: String = "") {
        let command = NBD.Command(rawValue: request.type)
        let bytes = command == .write && error == nil ? Int(request.length) : 0
        engine.record(command: command?.metricName ?? "other", bytes: bytes, error: error, started: started)
        if let error, structuredReplies {
            let text = Array(message.utf8.prefix(4096))
            var chunk = WireWriter(capacity: 26 + text.count)
            chunk.u32(NBD.structuredReplyMagic)
            chunk.u16(NBD.replyFlagDone)
            chunk.u16(NBD.ReplyType.error.rawValue)
            chunk.u64(request.cookie)
            chunk.u32(UInt32(6 + text.count))
            chunk.u32(error.rawValue)
            chunk.u16(UInt16(text.count))
            chunk.append(text)
            send(chunk.bytes)
        } else {
            let buffer = IOBuffer(count: NBD.simpleReplyHeaderSize)
            encodeSimpleReply(into: buffer.pointer, error: error?.rawValue ?? 0, cookie: request.cookie)
            send(buffer, count: buffer.count)
        }
        answered()
    }

    /// One request fewer in flight: maybe take more, maybe close.
    private func answered() {
        requestsInFlight -= 1
        resume()
        finishIfDone()
    }
}

/// Counts the pieces of one request still in flight and remembers the first
/// failure. The code issuing the pieces holds one more count, given up by
/// `issued()` once all are issued: a piece that completes at once (an error
/// found before any I/O) can never finish the request while others are still
/// being issued, nor twice.
final class Progress {
    private var remaining: Int
    private(set) var failure: Int32 = 0
    /// The supplier written or zeroed by the first failed piece, if known.
    private(set) var failedFD: Int32?

    init(pieces: Int) { remaining = pieces + 1 }

    /// One piece is done; true when it was the last (finish the request).
    func complete(_ result: Int32, fd: Int32? = nil) -> Bool {
        remaining -= 1
        if result < 0 && failure == 0 {
            failure = result
            failedFD = fd
        }
        return remaining == 0
    }

    /// Every piece is issued; true when all are done already.
    func issued() -> Bool { complete(0) }
}

/// Writes a structured reply chunk header into `base` (20 bytes).
func encodeStructuredHeader(into base: UnsafeMutableRawPointer, flags: UInt16, type: NBD.ReplyType, cookie: UInt64, length: UInt32) {
    base.storeBytes(of: NBD.structuredReplyMagic.bigEndian, toByteOffset: 0, as: UInt32.self)
    base.storeBytes(of: flags.bigEndian, toByteOffset: 4, as: UInt16.self)
    base.storeBytes(of: type.rawValue.bigEndian, toByteOffset: 6, as: UInt16.self)
    base.storeBytes(of: cookie.bigEndian, toByteOffset: 8, as: UInt64.self)
    base.storeBytes(of: length.bigEndian, toByteOffset: 16, as: UInt32.self)
}
