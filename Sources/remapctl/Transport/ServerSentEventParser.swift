import RemapWire
/// Splits a `text/event-stream` body, fed in pieces as it arrives, into
/// messages, as the HTML standard's "event stream interpretation" does:
/// lines end in CRLF, LF or CR; `field: value` lines (one space after the
/// colon dropped) build a message and a blank line dispatches it; lines
/// starting with `:` are comments (keep-alives).
struct ServerSentEventParser {
    /// One dispatched message.
    struct Message: Equatable {
        /// The `event:` field; `message` when none was given.
        var event: String
        /// The `data:` lines joined with line feeds.
        var data: String
        /// The last `id:` seen so far in the stream, which a reconnect sends
        /// back as `Last-Event-ID`.
        var lastEventID: String?
    }

    /// The last `id:` received; survives dispatch, as the standard says.
    private(set) var lastEventID: String?
    /// The reconnection delay the server asked for with `retry:`.
    private(set) var retryMilliseconds: Int?

    private var line: [UInt8] = []
    /// A CR ended the last line; an LF right after it belongs to it.
    private var afterCarriageReturn = false
    private var atStart = true
    private var eventType = ""
    private var dataLines: [String] = []
    private var hasData = false

    /// Lines longer than this are cut off rather than buffered for ever.
    static let maximumLineBytes = 1 << 20

    init(lastEventID: String? = nil) {
        self.lastEventID = lastEventID
    }

    /// The messages completed by `bytes`.
    mutating func feed(_ bytes: [UInt8]) -> [Message] {
        var messages: [Message] = []
        for byte in bytes {
            if afterCarriageReturn {
                afterCarriageReturn = false
                if byte == 10 { continue }
            }
            switch byte {
            case 13, 10:
                afterCarriageReturn = byte == 13
                if let message = process(line) { messages.append(message) }
                line = []
            default:
                if line.count < Self.maximumLineBytes { line.append(byte) }
            }
        }
        return messages
    }

    private mutating func process(_ bytes: [UInt8]) -> Message? {
        var text = String(decoding: bytes, as: UTF8.self)
        if atStart {
            atStart = false
            if text.hasPrefix("\u{FEFF}") { text.removeFirst() }
        }
        if text.isEmpty { return dispatch() }
        if text.hasPrefix(":") { return nil }

        let field: Substring
        var value: Substring
        if let colon = text.firstIndex(of: ":") {
            field = text[..<colon]
            value = text[text.index(after: colon)...]
            if value.hasPrefix(" ") { value = value.dropFirst() }
        } else {
            field = Substring(text)
            value = ""
        }
        switch field {
        case "event":
            eventType = String(value)
        case "data":
            dataLines.append(String(value))
            hasData = true
        case "id":
            if !value.contains("\u{0}") { lastEventID = String(value) }
        case "retry":
            if !value.isEmpty, value.allSatisfy({ $0.isASCII && $0.isNumber }), let milliseconds = Int(value) {
                retryMilliseconds = milliseconds
            }
        default:
            break
        }
        return nil
    }

    private mutating func dispatch() -> Message? {
        defer {
            eventType = ""
            dataLines = []
            hasData = false
        }
        guard hasData else { return nil }
        return Message(
            event: eventType.isEmpty ? "message" : eventType,
            data: dataLines.joined(separator: "\n"),
            lastEventID: lastEventID)
    }
}
