import CURing
import Glibc
import RemapCore
import RemapLog

/// One NBD client: input parsing, the reply queue, and its life cycle. The
/// handshake (NBDConnection+Handshake.swift) and the commands
/// (NBDConnection+Transmission.swift) are extensions.
///
/// Lives on the engine thread. Input is parsed from `input`; a WRITE's
/// payload is received straight into its own buffer. Replies go out as they
/// are ready (out of order with respect to requests), gathered into one
/// sendmsg when several are waiting. The connection closes once the client
/// is gone or said goodbye, every request in flight has been answered and no
/// socket operation is outstanding.
///
/// A client cannot make it hold more than its bounds (`NBDServer.limits`): it
/// takes no more requests or options while `heldBytes` (replies not yet
/// sent, and the buffers of reads and writes in flight) is at the reply
/// queue's cap, and goes on as the client reads its replies; it drops a
/// client that sends too many options before choosing an export, or
/// leaves a WRITE's payload incomplete for too long (`enforceDeadlines`).
final class NBDConnection {
    enum Phase { case clientFlags, options, transmission }

    /// A WRITE whose payload is still arriving.
    final class Payload {
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
    /// Requests in flight beyond which the connection takes no more.
    private static let maximumInFlight = 256
    /// What a queued reply part costs beyond its bytes (its buffer object,
    /// the allocation, the queue entry), counted so that many small
    /// replies are held to the cap too.
    private static let partCost = 128

    /// The client's socket, or after STARTTLS the plaintext end of its TLS
    /// tunnel (NBDConnection+TLS.swift).
    var fd: Int32
    unowned let server: NBDServer
    /// What the listener demands TLS with (nil: no TLS offered), and how far it is.
    let credentials: TLSCredentials?
    var tlsState = TLSState.off
    var ring: any IOQueue { server.ring }
    var exports: any ExportDirectory { server.exports }
    var phase = Phase.clientFlags
    private let input = IOBuffer(count: NBDConnection.inputCapacity)
    private var start = 0
    private var end = 0
    var payload: Payload?
    /// Bytes of a refused WRITE's payload still to be skipped, and the
    /// refusal to send once they are: a reply must not overtake the
    /// payload of its own request.
    var discarding = 0
    var refusal: (request: NBDRequest, started: Int64, error: NBD.Error, message: String)?
    /// `process()` is reading `input`: a request answered meanwhile must not
    /// start a receive into it.
    private var processing = false

    // Negotiated in the handshake.
    /// The image served, through the I/O surface (IO/VolumeIO.swift).
    var export: VolumeIO?
    /// The export name chosen.
    var exportName: String?
    var readOnly = false
    var noZeroes = false
    var structuredReplies = false
    /// The export the selected metadata context was negotiated for.
    var allocationContextFor: String?

    /// A part of a reply: the range of a buffer to send. The buffer is let
    /// go as soon as the part is sent.
    private struct Part {
        var buffer: IOBuffer?
        let offset: Int
        let count: Int
    }

    /// Parts of replies, in order. Those before `sentParts` are sent; their
    /// entries are removed in batches, so many small replies stay linear.
    private var outgoing: [Part] = []
    private var sentParts = 0
    private var sentOfFirst = 0
    /// Bytes of replies queued and not sent yet (with `partCost` each),
    /// plus the buffers of reads and writes in flight (`hold`): what the
    /// client makes remapd keep.
    private(set) var heldBytes = 0
    /// Options received before an export was chosen.
    private var optionsReceived = 0
    private var sending = false
    /// When the send in flight started or last moved bytes.
    private var sendProgressAt: Int64 = 0
    private var receiving = false
    private var socketOperations = 0
    var requestsInFlight = 0
    private var inputEnded = false
    private var broken = false
    private var closed = false

    /// When the client connected, for the handshake deadline.
    let connectedAt = monotonicNanoseconds()

    init(fd: Int32, server: NBDServer, credentials: TLSCredentials?) {
        self.fd = fd
        self.server = server
        self.credentials = credentials
    }

    /// Whether the client is still haggling options.
    var inHandshake: Bool { phase != .transmission }

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

    // MARK: - Bounds

    /// Whether the connection takes more requests (or options): under
    /// both its cap on requests in flight and its reply queue's cap.
    private var takesRequests: Bool {
        requestsInFlight < Self.maximumInFlight && UInt64(heldBytes) < server.limits.nbdReplyQueueBytes
    }

    /// Counts `bytes` of a request's buffer against the reply queue's cap
    /// until `release`d (the request's reply resumes the input).
    func hold(_ bytes: Int) { heldBytes += bytes }

    func release(_ bytes: Int) { heldBytes -= bytes }

    /// Drops the client if it overstays: in the handshake (no export
    /// chosen), with a WRITE whose payload is still incomplete, or with
    /// replies it does not read (its queue is capped, but holding the cap
    /// for ever on many connections would add up).
    func enforceDeadlines(now: Int64) {
        guard !broken else { return }  // dropped already
        let limits = server.limits
        if inHandshake && now - connectedAt > Int64(limits.nbdHandshakeTimeoutSeconds) * 1_000_000_000 {
            protocolError("no export chosen within \(limits.nbdHandshakeTimeoutSeconds) s")
        } else if let payload, now - payload.started > Int64(limits.nbdRequestTimeoutSeconds) * 1_000_000_000 {
            protocolError("a WRITE's payload still incomplete after \(limits.nbdRequestTimeoutSeconds) s")
        } else if sending && now - sendProgressAt > Int64(limits.nbdReplyTimeoutSeconds) * 1_000_000_000 {
            protocolError("no byte of its replies read for \(limits.nbdReplyTimeoutSeconds) s (\(heldBytes) bytes held)")
        }
    }

    // MARK: - Input

    /// Takes requests again once under the bounds: those already in
    /// `input` first, then more from the socket. Not while a receive is
    /// outstanding: its completion parses what it brings.
    func resume() {
        guard !processing, !receiving, !closed else { return }
        if !inputEnded && payload == nil && available > 0 {
            processing = true
            process()
            processing = false
        }
        receive()
        finishIfDone()
    }

    func receive() {
        // A payload being received is one request already taken: it goes on
        // whatever the bounds (its buffer is counted already). Nothing is
        // read between STARTTLS's reply and the switch to the tunnel.
        guard !processing, !receiving, !inputEnded, !closed, payload != nil || takesRequests,
              tlsState != .starting
        else { return }
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
            if let payload {
                // The client left in the middle of a WRITE: nothing to answer.
                self.payload = nil
                heldBytes -= payload.buffer.count
                requestsInFlight -= 1
            }
            if refusal != nil {
                refusal = nil
                requestsInFlight -= 1
            }
            return finishIfDone()
        }
        // Requests answered at once while this runs must not start a
        // receive: the next one's target (input or a payload) is only known
        // once the input is parsed.
        processing = true
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
        processing = false
        receive()
        finishIfDone()
    }

    var available: Int { end - start }

    /// Consumes every complete message in `input`, as long as the
    /// connection takes requests.
    private func process() {
        while !inputEnded && payload == nil && takesRequests {
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
                optionsReceived += 1
                guard optionsReceived <= server.limits.nbdMaxOptions else {
                    return protocolError("more than \(server.limits.nbdMaxOptions) options before choosing an export")
                }
                handleOption(option, data)
            case .transmission:
                if discarding > 0 {
                    let skip = min(discarding, available)
                    discarding -= skip
                    start += skip
                    if discarding > 0 { return }
                    if let refused = refusal {
                        refusal = nil
                        reply(refused.request, refused.started, error: refused.error, message: refused.message)
                    }
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

    /// Takes up to `count` bytes of a WRITE payload already received into
    /// `input`, copying them to `destination`; returns how many.
    func takeInput(into destination: UnsafeMutableRawPointer, count: Int) -> Int {
        let ready = min(available, count)
        destination.copyMemory(from: input.pointer + start, byteCount: ready)
        start += ready
        return ready
    }

    func protocolError(_ what: String) {
        log.notice("NBD client dropped: \(what)")
        drop()
    }

    /// Gives up on the client: nothing more is read or sent. The socket is
    /// shut down before `endInput` may close it: once closed, its number
    /// can belong to a connection the ring accepts in the meantime.
    func drop() {
        guard !closed else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        broken = true
        for part in unsent { heldBytes -= part.count + Self.partCost }
        heldBytes += sentOfFirst
        outgoing.removeAll()
        sentParts = 0
        sentOfFirst = 0
        endInput()
    }

    // MARK: - Output

    func send(_ bytes: [UInt8]) {
        let buffer = IOBuffer(copying: bytes)
        send(buffer, offset: 0, count: bytes.count)
    }

    /// Queues `count` bytes of `buffer` from `offset`; the buffer lives until sent.
    func send(_ buffer: IOBuffer, offset: Int = 0, count: Int) {
        guard !broken, !closed, count > 0 else { return }
        outgoing.append(Part(buffer: buffer, offset: offset, count: count))
        heldBytes += count + Self.partCost
        pump()
    }

    private var unsent: ArraySlice<Part> { outgoing[sentParts...] }

    /// Sends everything queued in one sendmsg; one send is in flight at a time
    /// so replies never interleave.
    private func pump() {
        guard !sending, !unsent.isEmpty, !broken else { return }
        let batch = Gather(unsent.prefix(64).enumerated().compactMap { index, part in
            let skip = index == 0 ? sentOfFirst : 0
            return part.buffer.map { ($0, part.offset + skip, part.count - skip) }  // unsent parts have theirs
        })
        sending = true
        sendProgressAt = monotonicNanoseconds()
        socketOperations += 1
        ring.sendMessage(fd: fd, message: batch.message) { [self] result in
            _ = batch  // iovecs and buffers live until the send completes
            socketOperations -= 1
            sending = false
            if result < 0 {
                drop()
            } else if !broken {  // once broken, nothing queued is counted
                var sent = Int(result)
                heldBytes -= sent
                while sent > 0, let first = unsent.first {
                    let left = first.count - sentOfFirst
                    if sent >= left {
                        sent -= left
                        heldBytes -= Self.partCost
                        outgoing[sentParts].buffer = nil
                        sentParts += 1
                        sentOfFirst = 0
                    } else {
                        sentOfFirst += sent
                        sent = 0
                    }
                }
                if sentParts == outgoing.count {
                    outgoing.removeAll()
                    sentParts = 0
                } else if sentParts >= 64 && sentParts * 2 >= outgoing.count {
                    outgoing.removeFirst(sentParts)
                    sentParts = 0
                }
                pump()
                if outgoing.isEmpty && !inputEnded && tlsState == .starting {
                    startTLSTunnel()  // receives on the tunnel
                } else {
                    resume()
                }
            }
            finishIfDone()
        }
    }

    func finishIfDone() {
        guard inputEnded, !closed, requestsInFlight == 0, socketOperations == 0,
              unsent.isEmpty || broken
        else { return }
        closed = true
        export?.detach()
        close(fd)
        server.connectionClosed(self)
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
