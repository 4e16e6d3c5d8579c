import Glibc
import Logging
import RemapLog
import Testing

@Suite struct JournalLogHandlerTests {
    /// What a logger at `level` writes while `body` logs through it, as lines.
    private func lines(level: Logger.Level = .debug, _ body: (Logger) -> Void) throws -> [String] {
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        let logger = Logger(label: "remapd") { JournalLogHandler(label: $0, level: level, fileDescriptor: fds[1]) }
        body(logger)
        close(fds[1])
        defer { close(fds[0]) }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while case let count = read(fds[0], &buffer, buffer.count), count > 0 {
            output += buffer[..<count]
        }
        let text = String(decoding: output, as: UTF8.self)
        #expect(text.isEmpty || text.hasSuffix("\n"))
        return text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    @Test(arguments: [
        (Logger.Level.error, "<3>"), (.warning, "<4>"), (.notice, "<5>"), (.info, "<6>"), (.debug, "<7>"),
        (.critical, "<2>"), (.trace, "<7>"),
    ])
    func eachLevelHasItsJournalPriority(level: Logger.Level, prefix: String) throws {
        let written = try lines(level: .trace) { $0.log(level: level, "pool 'default' is online") }
        #expect(written == ["\(prefix)remapd: pool 'default' is online"])
    }

    @Test func messagesBelowTheLevelAreLeftOut() throws {
        let written = try lines(level: .warning) { logger in
            logger.debug("debug")
            logger.info("info")
            logger.notice("notice")
            logger.warning("warning")
            logger.error("error")
        }
        #expect(written == ["<4>remapd: warning", "<3>remapd: error"])
    }

    @Test func clientTextIsEscaped() throws {
        let name = "x\nremapd: forged line\u{1b}[2K"
        let written = try lines { $0.info("NBD client asked for unknown export '\(name)'") }
        #expect(written == ["<6>remapd: NBD client asked for unknown export 'x\\nremapd: forged line\\x1b[2K'"])
    }

    @Test func aMessageWithNewlinesIsOneLine() throws {
        let written = try lines { logger in
            logger.notice("first\nsecond\r\nthird", metadata: ["path": "/a\nb"])
            logger.error("<3>remapd: forged\n<3>remapd: forged again")
        }
        #expect(written == [
            "<5>remapd: first\\nsecond\\r\\nthird path=/a\\nb",
            "<3>remapd: <3>remapd: forged\\n<3>remapd: forged again",
        ])
    }

    @Test func metadataFollowsTheMessageSortedByKey() throws {
        struct Refused: Error, CustomStringConvertible { var description: String { "no space" } }
        let written = try lines { logger in
            var logger = logger
            logger[metadataKey: "pool"] = "default"
            logger.warning("write refused", error: Refused(), metadata: ["bytes": "4096"])
        }
        #expect(written == ["<4>remapd: write refused bytes=4096 error=no space pool=default"])
    }
}
