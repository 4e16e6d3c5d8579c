import CURing
import Glibc
import RemapCore

/// One NBD client: the fixed-newstyle handshake, then transmission.
///
/// Lives on the engine thread. Input is parsed from `input`; a WRITE's
/// payload is received straight into its own buffer. Replies go out in the
/// order they are ready (out of order with respect to requests), gathered
/// into one sendmsg when several are waiting. The connection closes once the
/// client is gone or said goodbye, every request in flight has been answered
/// and no socket operation is outstanding.
final class NBDConnection {
    private enum Phase { case clientFlags, options, transmission }

    /// A WRITE whose payload is still arriving.
    private final class Payload {
        let request: NBDRequest
        let buffer: IOBuffer
        let started: Int64
        var filled = 0
        init(request: NBDRequest, buffer: IOBuffer, started: Int64) {
            self.request = request
            self.buffer = buffer
            self.started = started
        }
    }

    private static let inputCapacity = 128 * 1024
    /// Requests in flight beyond which the connection stops reading.
    private static let maximumInFlight = 256

    let fd: Int32
    private unowned let engine: Engine
    private var ring: Ring { engine.ring }
    private var phase = Phase.clientFlags
    private let input = IOBuffer(count: NBDConnection.inputCapacity)
    private var start = 0
    private var end = 0
    private var payload: Payload?
    /// Bytes of a refused WRITE's payload still to be skipped.
    private var discarding = 0
    private var export: Volume?
    private var noZeroes = false

    private var outgoing: [(buffer: IOBuffer, count: Int)] = []
    private var sentOfFirst = 0
    private var sending = false
    private var receiving = false
    private var socketOperations = 0
    private var requestsInFlight = 0
    private var inputEnded = false
    private var broken = false
    private var closed = false

    init(fd: Int32, engine: Engine) {
        self.fd = fd
        self.engine = engine
    }

    func greet() {
        var greeting = WireWriter()
        greeting.u64(NBD.initMagic)
        greeting.u64(NBD.optionMagic)
        greeting.u16(NBD.flagFixedNewstyle | NBD.flagNoZeroes)
        send(greeting.bytes)
        receive()
    }

    /// Stops reading requests; what is in flight is still answered.
    func endInput() {
        guard !inputEnded else { return }
        inputEnded = true
        if receiving { shutdown(fd, Int32(SHUT_RD)) }
        finishIfDone()
    }

    // MARK: - Input

    private func receive() {
        guard !receiving, !inputEnded, !closed, requestsInFlight < Self.maximumInFlight else { return }
        receiving = true
        socketOperations += 1
        if let payload {
            ring.receive(fd: fd, into: payload.buffer.pointer + payload.filled, count: payload.buffer.count - payload.filled) { [self] in
                received($0)
            }
            return
        }
        if start > 0 {
            if end > start { memmove(input.pointer, input.pointer + start, end - start) }
            end -= start
            start = 0
        }
        ring.receive(fd: fd, into: input.pointer + end, count: input.count - end) { [self] in received($0) }
    }

    private func received(_ result: Int32) {
        socketOperations -= 1
        receiving = false
        guard result > 0 else {
            inputEnded = true
            if payload != nil {
                // The client left in the middle of a WRITE: nothing to answer.
                payload = nil
                requestsInFlight -= 1
            }
            return finishIfDone()
        }
        if let payload {
            payload.filled += Int(result)
            if payload.filled == payload.buffer.count {
                self.payload = nil
                write(payload.request, payload.buffer, payload.started)
            }
        } else {
            end += Int(result)
        }
        if !inputEnded { process() }
        receive()
        finishIfDone()
    }

    private var available: Int { end - start }

    /// Consumes every complete message in `input`.
    private func process() {
        while !inputEnded && payload == nil {
            let base = input.pointer + start
            switch phase {
            case .clientFlags:
                guard available >= 4 else { return }
                var reader = WireReader(base)
                let flags = reader.u32()
                start += 4
                guard flags & NBD.clientFlagFixedNewstyle != 0,
                      flags & ~(NBD.clientFlagFixedNewstyle | NBD.clientFlagNoZeroes) == 0
                else { return protocolError("unsupported client flags \(flags)") }
                noZeroes = flags & NBD.clientFlagNoZeroes != 0
                phase = .options
            case .options:
                guard available >= NBD.optionHeaderSize else { return }
                var reader = WireReader(base)
                let magic = reader.u64()
                let option = reader.u32()
                let length = Int(reader.u32())
                guard magic == NBD.optionMagic else { return protocolError("bad option magic") }
                guard length <= NBD.maximumOptionLength else { return protocolError("option of \(length) bytes") }
                guard available >= NBD.optionHeaderSize + length else { return }
                let data = reader.bytes(length)
                start += NBD.optionHeaderSize + length
                handleOption(option, data)
            case .transmission:
                if discarding > 0 {
                    let skip = min(discarding, available)
                    discarding -= skip
                    start += skip
                    if discarding > 0 { return }
                    continue
                }
                guard available >= NBD.requestHeaderSize else { return }
                let (request, magic) = NBDRequest.decode(base)
                start += NBD.requestHeaderSize
                guard magic == NBD.requestMagic else { return protocolError("bad request magic") }
                handleRequest(request)
            }
        }
    }

    private func protocolError(_ what: String) {
        log("NBD client dropped: \(what)")
        drop()
    }

    /// Gives up on the client: nothing more is read or sent. The socket is
    /// shut down before `endInput` may close it: once closed, its number
    /// can belong to a connection the ring accepts in the meantime.
    private func drop() {
        guard !closed else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        broken = true
        outgoing.removeAll()
        endInput()
    }

    // MARK: - Handshake

    private func handleOption(_ code: UInt32, _ data: [UInt8]) {
        switch NBD.Option(rawValue: code) {
        case .exportName:
            let name = String(decoding: data, as: UTF8.self)
            guard let volume = engine.volume(named: name) else {
                // EXPORT_NAME has no way to report an error: the spec says close.
                log("NBD client asked for unknown export '\(name)'")
                return protocolError("unknown export '\(name)'")
            }
            var reply = WireWriter()
            reply.u64(volume.sizeBytes)
            reply.u16(transmissionFlags)
            if !noZeroes { reply.append(repeatElement(0, count: 124)) }
            send(reply.bytes)
            enterTransmission(volume)
        case .abort:
            send(encodeOptionReply(option: code, reply: .ack))
            endInput()
        case .list:
            guard data.isEmpty else { return optionError(code, .errorInvalid, "LIST takes no data") }
            for name in engine.exportNames {
                var entry = WireWriter()
                entry.u32(UInt32(name.utf8.count))
                entry.append(name.utf8)
                send(encodeOptionReply(option: code, reply: .server, data: entry.bytes))
            }
            send(encodeOptionReply(option: code, reply: .ack))
        case .info, .go:
            handleInfo(code, data, go: code == NBD.Option.go.rawValue)
        default:
            optionError(code, .errorUnsupported, "option \(code) is not supported")
        }
    }

    private func handleInfo(_ code: UInt32, _ data: [UInt8], go: Bool) {
        guard data.count >= 6 else { return optionError(code, .errorInvalid, "option data too short") }
        let (name, requests): (String, [UInt16]) = data.withUnsafeBytes { raw in
            var reader = WireReader(raw.baseAddress!)  // invariant: count >= 6
            let nameLength = Int(reader.u32())
            guard data.count >= 4 + nameLength + 2 else { return ("", [UInt16.max]) }
            let name = String(decoding: reader.bytes(nameLength), as: UTF8.self)
            let count = Int(reader.u16())
            guard data.count == 4 + nameLength + 2 + 2 * count else { return ("", [UInt16.max]) }
            return (name, (0..<count).map { _ in reader.u16() })
        }
        if requests == [UInt16.max] { return optionError(code, .errorInvalid, "option length does not match its content") }
        guard let volume = engine.volume(named: name) else {
            return optionError(code, .errorUnknown, "export '\(name)' not found")
        }
        var export = WireWriter()
        export.u16(NBD.Info.export.rawValue)
        export.u64(volume.sizeBytes)
        export.u16(transmissionFlags)
        send(encodeOptionReply(option: code, reply: .info, data: export.bytes))
        if requests.contains(NBD.Info.name.rawValue) {
            var info = WireWriter()
            info.u16(NBD.Info.name.rawValue)
            info.append(volume.name.utf8)
            send(encodeOptionReply(option: code, reply: .info, data: info.bytes))
        }
        if requests.contains(NBD.Info.blockSize.rawValue) {
            var info = WireWriter()
            info.u16(NBD.Info.blockSize.rawValue)
            info.u32(1)
            info.u32(4096)
            info.u32(UInt32(NBD.maximumPayload))
            send(encodeOptionReply(option: code, reply: .info, data: info.bytes))
        }
        send(encodeOptionReply(option: code, reply: .ack))
        if go { enterTransmission(volume) }
    }

    private func optionError(_ code: UInt32, _ reply: NBD.Reply, _ message: String) {
        send(encodeOptionReply(option: code, reply: reply, data: Array(message.utf8)))
    }

    private var transmissionFlags: UInt16 {
        NBD.transmitHasFlags | NBD.transmitSendFlush | NBD.transmitSendFUA | NBD.transmitCanMultiConn
    }

    private func enterTransmission(_ volume: Volume) {
        export = volume
        engine.attach(volume)
        phase = .transmission
    }

    // MARK: - Transmission

    private func handleRequest(_ request: NBDRequest) {
        let started = monotonicNanoseconds()
        guard let volume = export else { return protocolError("request before export") }  // unreachable by phase
        let inRange = request.offset <= volume.sizeBytes && UInt64(request.length) <= volume.sizeBytes - request.offset
        switch NBD.Command(rawValue: request.type) {
        case .write:
            let length = Int(request.length)
            guard request.flags & ~NBD.commandFUA == 0, length <= NBD.maximumPayload, inRange else {
                // Skip the payload so the stream stays in sync, and refuse.
                discarding = length
                requestsInFlight += 1
                return reply(request, started, error: .invalid)
            }
            requestsInFlight += 1
            let buffer = IOBuffer(count: length)
            let ready = min(available, length)
            buffer.pointer.copyMemory(from: input.pointer + start, byteCount: ready)
            start += ready
            if ready == length {
                write(request, buffer, started)
            } else {
                let pending = Payload(request: request, buffer: buffer, started: started)
                pending.filled = ready
                payload = pending
            }
        case .read:
            requestsInFlight += 1
            guard request.flags & ~NBD.commandFUA == 0, Int(request.length) <= NBD.maximumPayload, inRange else {
                return reply(request, started, error: .invalid)
            }
            read(request, volume, started)
        case .flush:
            requestsInFlight += 1
            engine.flush { [self] result in
                reply(request, started, error: result.nbdError)
            }
        case .disconnect:
            endInput()
        default:
            requestsInFlight += 1
            reply(request, started, error: .invalid)
        }
    }

    private func read(_ request: NBDRequest, _ volume: Volume, _ started: Int64) {
        let length = Int(request.length)
        let buffer = IOBuffer(count: NBD.simpleReplyHeaderSize + length)
        let data = buffer.pointer + NBD.simpleReplyHeaderSize
        let segments = volume.readPlan(offset: request.offset, length: length)
        let progress = Progress(remaining: segments.count)
        let finish = { [self] in
            if progress.failure != 0 { return reply(request, started, error: .io) }
            encodeSimpleReply(into: buffer.pointer, error: 0, cookie: request.cookie)
            send(buffer, count: buffer.count)
            engine.record(command: "read", bytes: length, error: nil, started: started)
            requestsInFlight -= 1
            receive()
        }
        for segment in segments {
            switch segment.target {
            case .zeros:
                memset(data + segment.bufferOffset, 0, segment.length)
                progress.remaining -= 1
            case .supplier(let index, let offset):
                let fd = engine.supplierFD(pool: volume.pool, index: index)
                ring.readFully(fd: fd, into: data + segment.bufferOffset, count: segment.length, offset: offset) { result in
                    _ = buffer  // the buffer lives until the read completes
                    progress.complete(result)
                    if progress.remaining == 0 { finish() }
                }
            }
        }
        if progress.remaining == 0 { finish() }
    }

    private func write(_ request: NBDRequest, _ buffer: IOBuffer, _ started: Int64) {
        guard let volume = export else { return }
        let length = Int(request.length)
        let plan: (segments: [IOSegment], newMappings: [NewMapping])
        do {
            plan = try volume.writePlan(offset: request.offset, length: length)
        } catch {
            return reply(request, started, error: error.nbdError)
        }
        engine.willWrite(volume, newMappings: plan.newMappings)
        let progress = Progress(remaining: plan.segments.count)
        let finish = { [self] in
            engine.didWrite(volume, offset: request.offset, length: length)
            if progress.failure != 0 { return reply(request, started, error: .io) }
            if request.flags & NBD.commandFUA != 0 {
                engine.flush { [self] result in reply(request, started, error: result.nbdError) }
            } else {
                reply(request, started, error: nil)
            }
        }
        for segment in plan.segments {
            guard case .supplier(let index, let offset) = segment.target else { continue }
            let fd = engine.supplierFD(pool: volume.pool, index: index)
            ring.writeFully(fd: fd, from: buffer.pointer + segment.bufferOffset, count: segment.length, offset: offset) { result in
                _ = buffer  // the payload lives until the write completes
                progress.complete(result)
                if progress.remaining == 0 { finish() }
            }
        }
        if plan.segments.isEmpty { finish() }
    }

    /// Answers a request without data, and counts it.
    private func reply(_ request: NBDRequest, _ started: Int64, error: NBD.Error?) {
        let command = NBD.Command(rawValue: request.type)
        let bytes = command == .write && error == nil ? Int(request.length) : 0
        engine.record(command: command?.metricName ?? "other", bytes: bytes, error: error, started: started)
        let buffer = IOBuffer(count: NBD.simpleReplyHeaderSize)
        encodeSimpleReply(into: buffer.pointer, error: error?.rawValue ?? 0, cookie: request.cookie)
        send(buffer, count: buffer.count)
        requestsInFlight -= 1
        receive()
        finishIfDone()
    }

    // MARK: - Output

    private func send(_ bytes: [UInt8]) {
        send(IOBuffer(copying: bytes), count: bytes.count)
    }

    private func send(_ buffer: IOBuffer, count: Int) {
        guard !broken, !closed else { return }
        outgoing.append((buffer, count))
        pump()
    }

    /// Sends everything queued in one sendmsg; one send is in flight at a time
    /// so replies never interleave.
    private func pump() {
        guard !sending, !outgoing.isEmpty, !broken else { return }
        let batch = Gather(outgoing.prefix(64).enumerated().map { index, entry in
            let skip = index == 0 ? sentOfFirst : 0
            return (entry.buffer, skip, entry.count - skip)
        })
        sending = true
        socketOperations += 1
        ring.sendMessage(fd: fd, message: batch.message) { [self] result in
            _ = batch  // iovecs and buffers live until the send completes
            socketOperations -= 1
            sending = false
            if result < 0 {
                drop()
            } else {
                var sent = Int(result)
                while sent > 0, let first = outgoing.first {
                    let left = first.count - sentOfFirst
                    if sent >= left {
                        sent -= left
                        outgoing.removeFirst()
                        sentOfFirst = 0
                    } else {
                        sentOfFirst += sent
                        sent = 0
                    }
                }
                pump()
            }
            finishIfDone()
        }
    }

    private func finishIfDone() {
        guard inputEnded, !closed, requestsInFlight == 0, socketOperations == 0,
              outgoing.isEmpty || broken
        else { return }
        closed = true
        if let export { engine.detach(export) }
        close(fd)
        engine.connectionClosed(self)
    }
}

/// Counts the pieces of one request still in flight and remembers the first
/// failure.
private final class Progress {
    var remaining: Int
    var failure: Int32 = 0
    init(remaining: Int) { self.remaining = remaining }

    func complete(_ result: Int32) {
        remaining -= 1
        if result < 0 && failure == 0 { failure = result }
    }
}

/// A msghdr with its iovecs, alive as long as the send that uses it.
private final class Gather {
    let message: UnsafeMutablePointer<msghdr>
    let vectors: UnsafeMutablePointer<iovec>
    let buffers: [IOBuffer]

    init(_ parts: [(IOBuffer, Int, Int)]) {
        buffers = parts.map(\.0)
        vectors = .allocate(capacity: parts.count)
        for (index, part) in parts.enumerated() {
            vectors[index] = iovec(iov_base: part.0.pointer + part.1, iov_len: part.2)
        }
        message = .allocate(capacity: 1)
        message.initialize(to: msghdr())
        message.pointee.msg_iov = vectors
        message.pointee.msg_iovlen = parts.count
    }

    deinit {
        vectors.deallocate()
        message.deallocate()
    }
}

extension RemapError {
    /// The NBD error a client sees for this failure.
    var nbdError: NBD.Error {
        switch self {
        case .noSpace: return .noSpace
        case .invalidArgument, .notFound, .shrinkNotAllowed: return .invalid
        case .inUse: return .permission
        case .alreadyExists, .io, .internal: return .io
        }
    }
}

extension Result where Failure == RemapError {
    var nbdError: NBD.Error? {
        if case .failure(let error) = self { return error.nbdError }
        return nil
    }
}
