import RemapCore
import RemapLog

/// The fixed-newstyle option haggling.
extension NBDConnection {
    func handleOption(_ code: UInt32, _ data: [UInt8]) {
        guard admitBeforeTLS(code) else { return }
        switch NBD.Option(rawValue: code) {
        case .exportName:
            let name = String(decoding: data, as: UTF8.self)
            guard let io = exports.export(named: name) else {
                // EXPORT_NAME has no way to report an error: the spec says close.
                log.info("NBD client asked for unknown export '\(name)'")
                return protocolError("unknown export '\(name)'")
            }
            var reply = WireWriter()
            reply.u64(io.sizeBytes)
            if io.isReadOnly { readOnly = true }
            reply.u16(transmissionFlags(readOnly: readOnly))
            if !noZeroes { reply.append(repeatElement(0, count: 124)) }
            send(reply.bytes)
            enterTransmission(io)
        case .abort:
            send(encodeOptionReply(option: code, reply: .ack))
            endInput()
        case .list:
            guard data.isEmpty else { return optionError(code, .errorInvalid, "LIST takes no data") }
            for name in exports.exportNames {
                var entry = WireWriter()
                entry.u32(UInt32(name.utf8.count))
                entry.append(name.utf8)
                send(encodeOptionReply(option: code, reply: .server, data: entry.bytes))
            }
            send(encodeOptionReply(option: code, reply: .ack))
        case .info, .go:
            handleInfo(code, data, go: code == NBD.Option.go.rawValue)
        case .structuredReply:
            guard data.isEmpty else { return optionError(code, .errorInvalid, "STRUCTURED_REPLY takes no data") }
            guard !structuredReplies else { return optionError(code, .errorInvalid, "structured replies are already on") }
            structuredReplies = true
            send(encodeOptionReply(option: code, reply: .ack))
        case .listMetaContext, .setMetaContext:
            handleMetaContext(code, data, set: code == NBD.Option.setMetaContext.rawValue)
        case .startTLS:
            handleStartTLS(code, data)
        default:
            optionError(code, .errorUnsupported, "option \(code) is not supported")
        }
    }

    private func handleInfo(_ code: UInt32, _ data: [UInt8], go: Bool) {
        var reader = OptionReader(data)
        var asked = Set<UInt16>()
        guard let name = reader.string(), let count = reader.u16() else {
            return optionError(code, .errorInvalid, "option length does not match its content")
        }
        for _ in 0..<count {
            guard let request = reader.u16() else {
                return optionError(code, .errorInvalid, "option length does not match its content")
            }
            asked.insert(request)
        }
        guard reader.atEnd else { return optionError(code, .errorInvalid, "option length does not match its content") }
        guard let io = exports.export(named: name) else {
            return optionError(code, .errorUnknown, "export '\(name)' not found")
        }
        var export = WireWriter()
        export.u16(NBD.Info.export.rawValue)
        export.u64(io.sizeBytes)
        if io.isReadOnly && go { readOnly = true }
        export.u16(transmissionFlags(readOnly: readOnly || io.isReadOnly))
        send(encodeOptionReply(option: code, reply: .info, data: export.bytes))
        if asked.contains(NBD.Info.name.rawValue) {
            var info = WireWriter()
            info.u16(NBD.Info.name.rawValue)
            info.append(io.imageName.utf8)
            send(encodeOptionReply(option: code, reply: .info, data: info.bytes))
        }
        if asked.contains(NBD.Info.description.rawValue) {
            var info = WireWriter()
            info.u16(NBD.Info.description.rawValue)
            info.append("remap \(io.isReadOnly ? "snapshot" : "volume") '\(io.imageName)' in pool '\(io.poolName)'".utf8)
            send(encodeOptionReply(option: code, reply: .info, data: info.bytes))
        }
        if asked.contains(NBD.Info.blockSize.rawValue) {
            var info = WireWriter()
            info.u16(NBD.Info.blockSize.rawValue)
            info.u32(1)
            info.u32(4096)
            info.u32(UInt32(NBD.maximumPayload))
            send(encodeOptionReply(option: code, reply: .info, data: info.bytes))
        }
        send(encodeOptionReply(option: code, reply: .ack))
        if go { enterTransmission(io) }
    }

    /// LIST_META_CONTEXT and SET_META_CONTEXT: remap serves `base:allocation`.
    private func handleMetaContext(_ code: UInt32, _ data: [UInt8], set: Bool) {
        guard structuredReplies else {
            return optionError(code, .errorInvalid, "negotiate structured replies before metadata contexts")
        }
        var reader = OptionReader(data)
        guard let name = reader.string(), let count = reader.u32() else {
            return optionError(code, .errorInvalid, "option length does not match its content")
        }
        var queries: [String] = []
        for _ in 0..<count {
            guard let query = reader.string() else {
                return optionError(code, .errorInvalid, "option length does not match its content")
            }
            queries.append(query)
        }
        guard reader.atEnd else { return optionError(code, .errorInvalid, "option length does not match its content") }
        guard exports.export(named: name) != nil else {
            return optionError(code, .errorUnknown, "export '\(name)' not found")
        }
        let matches: Bool
        if set {
            matches = queries.contains(NBD.allocationContext)
            allocationContextFor = matches ? name : nil
        } else {
            matches = queries.isEmpty || queries.contains(NBD.allocationContext) || queries.contains("base:")
        }
        if matches {
            var context = WireWriter()
            context.u32(set ? NBD.allocationContextID : 0)
            context.append(NBD.allocationContext.utf8)
            send(encodeOptionReply(option: code, reply: .metaContext, data: context.bytes))
        }
        send(encodeOptionReply(option: code, reply: .ack))
    }

    func optionError(_ code: UInt32, _ reply: NBD.Reply, _ message: String) {
        send(encodeOptionReply(option: code, reply: reply, data: Array(message.utf8)))
    }

    func transmissionFlags(readOnly: Bool) -> UInt16 {
        var flags = NBD.transmitHasFlags | NBD.transmitSendFlush | NBD.transmitSendFUA | NBD.transmitCanMultiConn
            | NBD.transmitSendCache
        if readOnly {
            flags |= NBD.transmitReadOnly
        } else {
            flags |= NBD.transmitSendTrim | NBD.transmitSendWriteZeroes | NBD.transmitSendFastZero
        }
        if structuredReplies { flags |= NBD.transmitSendDF }
        return flags
    }

    private func enterTransmission(_ io: VolumeIO) {
        export = io
        exportName = io.name
        if allocationContextFor != io.name { allocationContextFor = nil }
        io.attach()
        phase = .transmission
    }
}

/// Bounds-checked reading of option data.
struct OptionReader {
    private let bytes: [UInt8]
    private var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { position == bytes.count }

    mutating func u16() -> UInt16? {
        guard position + 2 <= bytes.count else { return nil }
        defer { position += 2 }
        return UInt16(bytes[position]) << 8 | UInt16(bytes[position + 1])
    }

    mutating func u32() -> UInt32? {
        guard position + 4 <= bytes.count else { return nil }
        defer { position += 4 }
        return bytes[position..<position + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// A string preceded by its 32-bit length.
    mutating func string() -> String? {
        guard let length = u32(), length <= 4096, position + Int(length) <= bytes.count else { return nil }
        defer { position += Int(length) }
        return String(decoding: bytes[position..<position + Int(length)], as: UTF8.self)
    }
}
