import RemapCore
@testable import RemapEngine
import Testing

@Suite struct PSKFileTests {
    let key = String(repeating: "0f", count: 32)

    @Test func users_come_from_username_hexkey_lines() throws {
        let text = "alice:\(key)\n\nbob:\(key.uppercased())"
        #expect(try TLSCredentials.pskUsers(text, file: "k") == ["alice", "bob"])
    }

    @Test func a_malformed_line_is_refused_with_its_number() {
        for (text, says) in [
            ("alice:\(key)\nbob \(key)\n", "line 2: no ':'"),
            (":\(key)\n", "line 1: empty user name"),
            ("alice:\(key)0\n", "even number of hex digits"),
            ("alice:xy\(key)\n", "even number of hex digits"),
            ("alice:0123456789abcdef\n", "the key has 8 bytes"),
            ("\n\n", "has no key"),
            ("alice:\(key)\r\n", "line 1: a carriage return"),
        ] {
            #expect(throws: RemapError.self) { try TLSCredentials.pskUsers(text, file: "k") }
            do {
                _ = try TLSCredentials.pskUsers(text, file: "k")
            } catch {
                #expect(error.description.contains(says), "\(text.debugDescription): \(error)")
            }
        }
    }
}
