import Glibc
import RemapCore

/// The transmission phase: every command, with simple or structured replies.
extension NBDConnection {
    func handleRequest(_ request: NBDRequest) {
        let started = monotonicNanoseconds()
        guard let io = export else { return protocolError("request before export") }  // unreachable by phase
        let command = NBD.Command(rawValue: request.type)
        if command == .disconnect { return endInput() }
        requestsInFlight += 1
        let length = Int(request.length)
        let size = io.sizeBytes
        let inRange = request.offset <= size && UInt64(request.length) <= size - request.offset
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
            return io.flush { [self] result in reply(request, started, result) }
        }
        if readOnly && (command == .write || command == .trim || command == .writeZeroes) {
            return refuse(.permission, "export '\(io.imageName)' is read-only")
        }
        guard length > 0 else { return refuse(.invalid, "length must not be 0") }
        guard inRange else {
            return refuse(.invalid, "range \(request.offset)+\(length) ends beyond the export's \(size) bytes")
        }
        switch command {
        case .read:
            guard length <= NBD.maximumPayload else { return refuse(.invalid, "reads are limited to \(NBD.maximumPayload) bytes") }
            read(request, io, started)
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
            io.zero(offset: request.offset, length: length, mayTrim: true, fua: flags & NBD.commandFUA != 0,
                    fastZero: flags & NBD.commandFastZero != 0,
                    noHole: command == .writeZeroes && flags & NBD.commandNoHole != 0) { [self] result in
                reply(request, started, result)
            }
        case .cache:
            reply(request, started, error: nil)  // data is read from the suppliers on demand
        case .blockStatus:
            blockStatus(request, io, started)
        default:
            refuse(.invalid, "unknown command \(request.type)")
        }
    }

    // MARK: - READ

    /// Room before the data for the largest header (structured: 20 + 8).
    private static let headroom = 32

    private func read(_ request: NBDRequest, _ io: VolumeIO, _ started: Int64) {
        let length = Int(request.length)
        // The data starts after the headroom: aligning the buffer would only
        // waste most of a page per small read.
        let buffer = IOBuffer(count: Self.headroom + length, pageAligned: false)
        hold(length)
        io.read(offset: request.offset, length: length, into: buffer.pointer + Self.headroom, owner: buffer) { [self] result in
            let segments: [IOSegment]
            switch result {
            case .success(let read): segments = read
            case .failure(let error):
                release(length)
                return reply(request, started, .failure(error))
            }
            if structuredReplies {
                sendStructuredRead(request, buffer, segments, dontFragment: request.flags & NBD.commandDF != 0)
            } else {
                encodeSimpleReply(into: buffer.pointer + Self.headroom - NBD.simpleReplyHeaderSize, error: 0, cookie: request.cookie)
                send(buffer, offset: Self.headroom - NBD.simpleReplyHeaderSize, count: NBD.simpleReplyHeaderSize + length)
            }
            release(length)  // counted in the reply queue now
            server.record(command: "read", bytes: length, error: nil, started: started)
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
        guard let io = export else { return }
        io.write(offset: request.offset, length: Int(request.length), from: buffer.pointer, owner: buffer,
                 fua: request.flags & NBD.commandFUA != 0) { [self] result in
            release(Int(request.length))
            reply(request, started, result)
        }
    }

    // MARK: - BLOCK_STATUS

    private func blockStatus(_ request: NBDRequest, _ io: VolumeIO, _ started: Int64) {
        guard structuredReplies, allocationContextFor == exportName else {
            return reply(request, started, error: .invalid, message: "negotiate the base:allocation metadata context first")
        }
        let one = request.flags & NBD.commandReqOne != 0
        let runs = io.extents(offset: request.offset, length: UInt64(request.length), maximumRuns: one ? 1 : 2048)
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
        server.record(command: "block_status", bytes: 0, error: nil, started: started)
        answered()
    }

    // MARK: - Replies

    /// Answers a request with the outcome of a surface call: its error
    /// through the one table (`RemapError.nbdError`).
    func reply(_ request: NBDRequest, _ started: Int64, _ result: Result<Void, RemapError>) {
        guard case .failure(let error) = result else { return reply(request, started, error: nil) }
        let message: String
        if case .noSpace = error, let io = export {
            message = "no space left in pool '\(io.poolName)'"
        } else {
            message = error.description
        }
        reply(request, started, error: error.nbdError, message: message)
    }

    /// Answers a request without data, and counts it. With structured
    /// replies an error carries `message` for the person at the client.
    func reply(_ request: NBDRequest, _ started: Int64, error: NBD.Error?, message: String = "") {
        let command = NBD.Command(rawValue: request.type)
        let bytes = command == .write && error == nil ? Int(request.length) : 0
        server.record(command: command?.metricName ?? "other", bytes: bytes, error: error, started: started)
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

/// Writes a structured reply chunk header into `base` (20 bytes).
func encodeStructuredHeader(into base: UnsafeMutableRawPointer, flags: UInt16, type: NBD.ReplyType, cookie: UInt64, length: UInt32) {
    base.storeBytes(of: NBD.structuredReplyMagic.bigEndian, toByteOffset: 0, as: UInt32.self)
    base.storeBytes(of: flags.bigEndian, toByteOffset: 4, as: UInt16.self)
    base.storeBytes(of: type.rawValue.bigEndian, toByteOffset: 6, as: UInt16.self)
    base.storeBytes(of: cookie.bigEndian, toByteOffset: 8, as: UInt64.self)
    base.storeBytes(of: length.bigEndian, toByteOffset: 16, as: UInt32.self)
}
