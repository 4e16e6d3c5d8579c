@testable import RemapFuzz
import Testing

/// The nbd-transmission target's reply checks catch what they claim to:
/// server byte streams written by hand, good and broken.
@Suite struct NBDConversationTests {
    /// Selector 4: export `disk` with structured replies and base:allocation.
    static let structured: UInt8 = 4

    /// A READ of 4096 bytes at 0 (cookie 0), then a BLOCK_STATUS with REQ_ONE (cookie 1).
    static func requests() -> ArraySlice<UInt8> {
        var wire = NBDClientWire()
        wire.request(command: NBDClientWire.commandRead, offset: 0, length: 4096)
        wire.request(command: NBDClientWire.commandBlockStatus, flags: NBDClientWire.flagRequestOne, offset: 0, length: 4096)
        return wire.bytes[...]
    }

    /// Greeting, then the acks of STRUCTURED_REPLY, SET_META_CONTEXT and GO.
    static func handshakeReplies() -> [UInt8] {
        var wire = NBDClientWire()
        wire.append("NBDMAGICIHAVEOPT".utf8)
        wire.u16(3)
        for option in [NBDClientWire.optionStructuredReply, NBDClientWire.optionSetMetaContext, NBDClientWire.optionGo] {
            wire.u64(NBDClientWire.optionReplyMagic)
            wire.u32(option)
            wire.u32(NBDClientWire.replyAck)
            wire.u32(0)
        }
        return wire.bytes
    }

    static func chunk(type: UInt16, cookie: UInt64, done: Bool = true, payload: [UInt8]) -> [UInt8] {
        var wire = NBDClientWire()
        wire.u32(NBDClientWire.structuredReplyMagic)
        wire.u16(done ? 1 : 0)
        wire.u16(type)
        wire.u64(cookie)
        wire.u32(UInt32(payload.count))
        wire.append(payload)
        return wire.bytes
    }

    static func hole(cookie: UInt64, offset: UInt64, length: UInt32, done: Bool = true) -> [UInt8] {
        var payload = NBDClientWire()
        payload.u64(offset)
        payload.u32(length)
        return chunk(type: NBDClientWire.chunkOffsetHole, cookie: cookie, done: done, payload: payload.bytes)
    }

    static func blockStatus(cookie: UInt64, extents: [UInt32]) -> [UInt8] {
        var payload = NBDClientWire()
        payload.u32(1)
        for length in extents {
            payload.u32(length)
            payload.u32(3)
        }
        return chunk(type: NBDClientWire.chunkBlockStatus, cookie: cookie, payload: payload.bytes)
    }

    static func converse(_ replies: [UInt8]) {
        let conversation = NBDConversation(selector: structured, requests: requests())
        // In two pieces, split inside a reply, as recv may deliver them.
        let cut = replies.count / 2 + 3
        replies[..<cut].withUnsafeBytes { conversation.receive($0) }
        replies[cut...].withUnsafeBytes { conversation.receive($0) }
        conversation.finish()
    }

    @Test func a_correct_conversation_passes() {
        Self.converse(Self.handshakeReplies() + Self.hole(cookie: 0, offset: 0, length: 1024, done: false)
                      + Self.blockStatus(cookie: 1, extents: [4096]) + Self.hole(cookie: 0, offset: 1024, length: 3072))
    }

    @Test func a_read_not_covered_whole_fails() async {
        await #expect(processExitsWith: .failure) {
            NBDConversationTests.converse(NBDConversationTests.handshakeReplies() + NBDConversationTests.hole(cookie: 0, offset: 0, length: 1024)
                                          + NBDConversationTests.blockStatus(cookie: 1, extents: [4096]))
        }
    }

    @Test func two_extents_for_req_one_fail() async {
        await #expect(processExitsWith: .failure) {
            NBDConversationTests.converse(NBDConversationTests.handshakeReplies() + NBDConversationTests.hole(cookie: 0, offset: 0, length: 4096)
                                          + NBDConversationTests.blockStatus(cookie: 1, extents: [512, 3584]))
        }
    }

    @Test func a_request_never_answered_fails() async {
        await #expect(processExitsWith: .failure) {
            NBDConversationTests.converse(NBDConversationTests.handshakeReplies() + NBDConversationTests.hole(cookie: 0, offset: 0, length: 4096))
        }
    }

    @Test func a_reply_to_an_unknown_cookie_fails() async {
        await #expect(processExitsWith: .failure) {
            NBDConversationTests.converse(NBDConversationTests.handshakeReplies() + NBDConversationTests.hole(cookie: 7, offset: 0, length: 4096))
        }
    }
}
