import Foundation
import RemapWire
import Testing

@Suite struct ProblemCodeTests {
    /// The table of docs/api-v1.md, "Errors".
    @Test func statuses_and_titles() {
        let table = Dictionary(uniqueKeysWithValues: ProblemCode.allCases.map { ($0.rawValue, $0.status) })
        #expect(table == [
            "invalid-argument": 400, "unauthorized": 401, "not-found": 404, "method-not-allowed": 405,
            "already-exists": 409, "in-use": 409, "shrink-not-allowed": 409, "pool-unavailable": 409,
            "supplier-failed": 409, "payload-too-large": 413, "unsupported-media-type": 415,
            "range-not-satisfiable": 416, "internal": 500, "too-many-streams": 503, "insufficient-space": 507,
        ])
        #expect(ProblemCode.internalError.title == "Internal error")
        #expect(ProblemCode.tooManyStreams.title == "Too many event streams")
    }

    @Test func a_status_names_a_code_only_when_it_has_one() {
        #expect(ProblemCode(status: 404) == .notFound)
        #expect(ProblemCode(status: 507) == .insufficientSpace)
        #expect(ProblemCode(status: 409) == nil)
        #expect(ProblemCode(status: 418) == nil)
    }
}

@Suite struct ProblemDocumentTests {
    private func encoded(_ problem: Problem) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(problem), as: UTF8.self)
    }

    private func decoded(_ text: String) throws -> Problem {
        try JSONDecoder().decode(Problem.self, from: Data(text.utf8))
    }

    /// What remapd sends: headers (Allow, Retry-After) stay out of the document.
    @Test func encodes_the_document_only() throws {
        var problem = Problem(.methodNotAllowed, detail: "PUT is not allowed")
        problem.allow = "GET"
        problem.retryAfterSeconds = 5
        #expect(try encoded(problem) == #"{"code":"method-not-allowed","detail":"PUT is not allowed","status":405,"#
            + #""title":"Method not allowed","type":"urn:remap:problem:method-not-allowed"}"#)
        var full = Problem(.insufficientSpace, detail: "no")
        full.requestedBytes = 2
        full.availableBytes = 1
        #expect(try encoded(full).contains(#""availableBytes":1,"code":"insufficient-space""#))
        #expect(try decoded(encoded(full)) == full)
    }

    @Test func reads_what_a_partial_document_has() throws {
        let typed = try decoded(#"{"type": "urn:remap:problem:in-use", "status": 409}"#)
        #expect((typed.code, typed.status, typed.detail) == ("in-use", 409, ""))
        let other = try decoded(#"{"type": "https://example.com/out-of-cheese", "detail": "x"}"#)
        #expect((other.code, other.status, other.detail) == ("", 0, "x"))
        #expect(try decoded(#"{"code": "not-found", "type": "urn:remap:problem:in-use"}"#).code == "not-found")
        #expect(throws: DecodingError.self) { try decoded(#"{"status": "409"}"#) }
    }
}
