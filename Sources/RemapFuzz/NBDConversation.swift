/// One connection of the nbd-transmission target, checked as a strict client
/// would check it (NetworkBlockDevice/nbd doc/proto.md): every reply is
/// framed right, answers a request in flight, READ data and holes cover the
/// request exactly, BLOCK_STATUS describes a non-empty range, and once the
/// client has sent its last byte every complete request is answered before
/// the server closes — unless a broken request header made it drop the
/// client, which may lose replies still queued.
///
/// The requests are framed the way the server frames them (a WRITE's
/// `length` payload bytes always follow its header, answered or refused;
/// nothing after DISC or a bad magic is read), and each gets its index as
/// cookie: the server only echoes cookies, so nothing it does is lost, and
/// replies are never ambiguous.
final class NBDConversation {
    struct Request {
        var command: UInt16
        var flags: UInt16
        var offset: UInt64
        var length: UInt32
        /// Byte ranges of a structured READ reply seen so far (offset, length).
        var covered: [(UInt64, UInt64)] = []
    }

    private enum Stage { case greeting, options(left: Int), transmission }

    /// What the client sends: the handshake, then the requests.
    private(set) var clientBytes: [UInt8]
    private let structured: Bool
    private var inFlight: [UInt64: Request] = [:]
    /// The server stops at a bad request magic and may drop queued replies.
    private var headerBroken = false

    private var stage = Stage.greeting
    private var pending: [UInt8] = []
    /// Data bytes of the current reply still to come, not looked at.
    private var skipping = 0

    init(selector: UInt8, requests input: ArraySlice<UInt8>) {
        structured = selector & 4 != 0
        clientBytes = NBDFuzzing.transmissionPrefix(selector: selector)
        var bytes = Array(input)
        var position = 0
        var cookie: UInt64 = 0
        while position + 28 <= bytes.count {
            guard load(UInt32.self, bytes, position) == NBDClientWire.requestMagic else {
                headerBroken = true
                break
            }
            let request = Request(command: load(UInt16.self, bytes, position + 6), flags: load(UInt16.self, bytes, position + 4),
                                  offset: load(UInt64.self, bytes, position + 16), length: load(UInt32.self, bytes, position + 24))
            withUnsafeBytes(of: cookie.bigEndian) { bytes.replaceSubrange(position + 8..<position + 16, with: $0) }
            position += 28
            if request.command == NBDClientWire.commandDisconnect { break }
            let payload = request.command == NBDClientWire.commandWrite ? Int(request.length) : 0
            // A request whose payload the client never finishes is never answered.
            if position + payload <= bytes.count { inFlight[cookie] = request }
            position += payload
            cookie += 1
        }
        clientBytes += bytes
    }

    // MARK: - Replies

    /// Takes the next bytes the server sent.
    func receive(_ bytes: UnsafeRawBufferPointer) {
        var rest = bytes[...]
        if skipping > 0 {
            let skip = min(skipping, rest.count)
            skipping -= skip
            rest = rest.dropFirst(skip)
        }
        pending += rest
        var position = 0
        while true {
            if skipping > 0 {
                // Data that arrived with its header: skip what is here.
                let skip = min(skipping, pending.count - position)
                skipping -= skip
                position += skip
                if skipping > 0 { break }
            }
            guard let used = parse(pending[position...]) else { break }
            position += used
        }
        pending.removeFirst(position)
    }

    /// The server closed the connection.
    func finish() {
        guard !headerBroken else { return }
        expect(pending.isEmpty && skipping == 0, "the connection closed in the middle of a reply")
        if let (cookie, request) = inFlight.min(by: { $0.key < $1.key }) {
            fail("request \(cookie) (command \(request.command), offset \(request.offset), length \(request.length)) was never answered")
        }
    }

    /// Parses one message at the start of `bytes`; its length, or nil
    /// until all of it has arrived.
    private func parse(_ bytes: ArraySlice<UInt8>) -> Int? {
        let base = bytes.startIndex
        switch stage {
        case .greeting:
            guard bytes.count >= 18 else { return nil }
            expect(bytes.prefix(16).elementsEqual("NBDMAGICIHAVEOPT".utf8), "bad greeting")
            stage = .options(left: structured ? 3 : 1)
            return 18
        case .options(let left):
            guard bytes.count >= 20 else { return nil }
            expect(load(UInt64.self, bytes, base) == NBDClientWire.optionReplyMagic, "bad option reply magic")
            let type = load(UInt32.self, bytes, base + 12)
            let length = Int(load(UInt32.self, bytes, base + 16))
            guard bytes.count >= 20 + length else { return nil }
            expect(type < 0x8000_0000, "the handshake's option \(load(UInt32.self, bytes, base + 8)) failed: type \(type)")
            if type == NBDClientWire.replyAck { stage = left == 1 ? .transmission : .options(left: left - 1) }
            return 20 + length
        case .transmission:
            guard bytes.count >= 4 else { return nil }
            switch load(UInt32.self, bytes, base) {
            case NBDClientWire.simpleReplyMagic: return simpleReply(bytes)
            case NBDClientWire.structuredReplyMagic: return structuredChunk(bytes)
            case let magic: fail("reply magic \(magic)")
            }
        }
    }

    private func simpleReply(_ bytes: ArraySlice<UInt8>) -> Int? {
        guard bytes.count >= 16 else { return nil }
        let error = load(UInt32.self, bytes, bytes.startIndex + 4)
        let cookie = load(UInt64.self, bytes, bytes.startIndex + 8)
        let request = answered(cookie)
        if request.command == NBDClientWire.commandRead {
            expect(!structured, "a simple reply to READ \(cookie) after structured replies were negotiated")
            if error == 0 { skipping = Int(request.length) }
        }
        return 16
    }

    private func structuredChunk(_ bytes: ArraySlice<UInt8>) -> Int? {
        guard bytes.count >= 20 else { return nil }
        let base = bytes.startIndex
        expect(structured, "a structured reply without structured replies negotiated")
        let done = load(UInt16.self, bytes, base + 4) & 1 != 0
        let type = load(UInt16.self, bytes, base + 6)
        let cookie = load(UInt64.self, bytes, base + 8)
        let length = Int(load(UInt32.self, bytes, base + 16))
        guard var request = inFlight[cookie] else { fail("structured reply to request \(cookie), which is not in flight") }
        expect(length <= 33 << 20, "structured chunk of \(length) bytes")
        // Data is skipped: only its offset is needed.
        let needed = type == NBDClientWire.chunkOffsetData ? 8 : length
        guard bytes.count >= 20 + needed else { return nil }
        let payload = bytes[(base + 20)..<(base + 20 + needed)]
        switch type {
        case NBDClientWire.chunkOffsetData, NBDClientWire.chunkOffsetHole:
            expect(request.command == NBDClientWire.commandRead, "data or hole chunk for command \(request.command)")
            expect(length >= (type == NBDClientWire.chunkOffsetData ? 9 : 12), "short data or hole chunk")
            let offset = load(UInt64.self, payload, payload.startIndex)
            let size = type == NBDClientWire.chunkOffsetData ? UInt64(length - 8) : UInt64(load(UInt32.self, payload, payload.startIndex + 8))
            let start = offset &- request.offset
            expect(offset >= request.offset && start < UInt64(request.length) && size > 0 && size <= UInt64(request.length) - start,
                   "chunk \(offset)+\(size) outside READ \(request.offset)+\(request.length)")
            expect(!request.covered.contains { offset < $0.0 + $0.1 && $0.0 < offset + size }, "READ chunks overlap at \(offset)")
            request.covered.append((offset, size))
            if done {
                expect(request.covered.reduce(0) { $0 + $1.1 } == UInt64(request.length), "READ \(cookie) not covered whole")
            }
            if type == NBDClientWire.chunkOffsetData { skipping = length - 8 }
        case NBDClientWire.chunkBlockStatus:
            expect(request.command == NBDClientWire.commandBlockStatus, "block status chunk for command \(request.command)")
            expect(length >= 12 && (length - 4) % 8 == 0, "block status chunk of \(length) bytes")
            let descriptors = (length - 4) / 8
            expect(load(UInt32.self, payload, payload.startIndex) == 1, "block status for another context")
            expect(request.flags & NBDClientWire.flagRequestOne == 0 || descriptors == 1, "REQ_ONE answered with \(descriptors) extents")
            for index in 0..<descriptors {
                expect(load(UInt32.self, payload, payload.startIndex + 4 + 8 * index) > 0, "a block status extent of 0 bytes")
            }
        case NBDClientWire.chunkError, NBDClientWire.chunkErrorOffset:
            expect(length >= 6 && Int(load(UInt16.self, payload, payload.startIndex + 4)) <= length - 6, "error chunk of \(length) bytes")
            expect(load(UInt32.self, payload, payload.startIndex) != 0, "error chunk with error 0")
            expect(done, "an error chunk that does not end request \(cookie)")
        case NBDClientWire.chunkNone:
            expect(length == 0 && done, "a NONE chunk with data or not the last")
        default:
            fail("structured chunk type \(type)")
        }
        inFlight[cookie] = request
        if done { _ = answered(cookie) }
        return 20 + needed
    }

    /// Ends request `cookie`, which must be in flight.
    private func answered(_ cookie: UInt64) -> Request {
        guard let request = inFlight.removeValue(forKey: cookie) else { fail("a reply to request \(cookie), which is not in flight") }
        return request
    }

    private func expect(_ condition: Bool, _ what: @autoclosure () -> String) {
        if !condition { fail(what()) }
    }

    private func fail(_ what: String) -> Never {
        fatalError("NBD protocol broken: \(what)")
    }
}

/// A big-endian integer at `offset` of `bytes` (an absolute index).
private func load<T: FixedWidthInteger, C: Collection>(_ type: T.Type, _ bytes: C, _ offset: C.Index) -> T
where C.Element == UInt8, C.Index == Int {
    var value: T = 0
    for index in offset..<offset + MemoryLayout<T>.size { value = value << 8 | T(bytes[index]) }
    return value
}
