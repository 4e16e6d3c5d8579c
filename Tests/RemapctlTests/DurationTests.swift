@testable import remapctl
import Testing

/// Spans of seconds as `--ttl` and `queue:SECONDS` take them.
@Suite struct SecondsTests {
    @Test(arguments: [
        ("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1H30M", 5400),
        (" 45s ", 45), ("1d1s", 86401), ("0h5m", 300),
    ] as [(String, Int)])
    func parses(text: String, seconds: Int) throws {
        #expect(try Seconds(parsing: text).value == seconds)
    }

    @Test(arguments: [
        ("", Seconds.ParseError.empty), ("0", .notPositive), ("-5", .notPositive), ("0s", .notPositive),
        ("1h30", .notADuration("1h30")), ("h", .notADuration("h")), ("5x", .notADuration("5x")),
        ("1.5h", .notADuration("1.5h")), ("99999999999999999d", .tooLarge),
    ] as [(String, Seconds.ParseError)])
    func refuses(text: String, error: Seconds.ParseError) {
        #expect(throws: error) { try Seconds(parsing: text) }
    }

    /// In the largest units that give it exactly.
    @Test(arguments: [(90, "1m30s"), (7200, "2h"), (5400, "1h30m"), (86401, "1d1s"), (45, "45s"), (0, "0s")])
    func describes(seconds: Int, text: String) {
        #expect(Seconds(seconds).description == text)
    }

    @Test func parses_its_own_description() throws {
        for seconds in [1, 59, 61, 3599, 3601, 90061] {
            #expect(try Seconds(parsing: Seconds(seconds).description).value == seconds)
        }
    }
}
