@testable import RemapEngine
import Testing

@Suite struct NBDWireTests {
    @Test func greeting_magic_spells_NBDMAGIC_and_IHAVEOPT() {
        var writer = WireWriter()
        writer.u64(NBD.initMagic)
        writer.u64(NBD.optionMagic)
        #expect(String(decoding: writer.bytes, as: UTF8.self) == "NBDMAGICIHAVEOPT")
    }

    @Test func decodes_a_request_header() {
        var writer = WireWriter()
        writer.u32(NBD.requestMagic)
        writer.u16(NBD.commandFUA)
        writer.u16(NBD.Command.write.rawValue)
        writer.u64(0xdead_beef)
        writer.u64(1 << 40)
        writer.u32(4096)
        let decoded = writer.bytes.withUnsafeBytes { NBDRequest.decode($0.baseAddress!) }
        #expect(decoded.magic == NBD.requestMagic)
        #expect(decoded.request == NBDRequest(flags: 1, type: 1, cookie: 0xdead_beef, offset: 1 << 40, length: 4096))
    }

    @Test func encodes_simple_replies_and_option_replies() {
        var reply = [UInt8](repeating: 0, count: 16)
        reply.withUnsafeMutableBytes { encodeSimpleReply(into: $0.baseAddress!, error: 28, cookie: 7) }
        #expect(reply == [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 7])
        let option = encodeOptionReply(option: 7, reply: .errorUnknown, data: Array("x".utf8))
        #expect(option.count == 21)
        #expect(Array(option[12..<16]) == [0x80, 0, 0, 6])
    }
}
