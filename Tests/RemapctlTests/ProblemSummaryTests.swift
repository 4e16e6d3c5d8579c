@testable import remapctl
import RemapWire
import Testing

/// remapctl's one error line: `<detail> (<code>, HTTP <status>)`.
@Suite struct ProblemSummaryTests {
    @Test func the_servers_code_wins() {
        let problem = Problem(.shrinkNotAllowed, detail: "volume v would shrink")
        #expect(problem.summary(httpStatus: 409, reason: "Conflict") == "volume v would shrink (shrink-not-allowed, HTTP 409)")
    }

    /// Without a code, the status names one only where remap has one code
    /// for it: a bare 409 could be any of five.
    @Test(arguments: [(404, "not-found"), (401, "unauthorized"), (507, "insufficient-space"), (409, "http-409"),
                      (502, "http-502"), (418, "http-418")])
    func without_a_code(status: Int, code: String) {
        #expect(Problem(plainText: Array("Nope\nmore".utf8)).summary(httpStatus: status, reason: "R") == "Nope (\(code), HTTP \(status))")
    }

    @Test func the_text_falls_back_to_title_then_reason() {
        var problem = Problem(status: 409, code: "in-use", title: "In use", detail: "")
        #expect(problem.summary(httpStatus: 409, reason: "Conflict") == "In use (in-use, HTTP 409)")
        problem.title = ""
        #expect(problem.summary(httpStatus: 409, reason: "Conflict") == "Conflict (in-use, HTTP 409)")
        #expect(problem.summary(httpStatus: 409, reason: "") == "request failed (in-use, HTTP 409)")
    }

    @Test func stays_on_one_line() {
        let problem = Problem(.invalidArgument, detail: "line one\nline two\r\nthree\rfour")
        #expect(problem.summary(httpStatus: 400, reason: "") == "line one line two three four (invalid-argument, HTTP 400)")
    }

    @Test func a_long_text_body_lends_no_detail() {
        #expect(Problem(plainText: Array(String(repeating: "x", count: 201).utf8)).detail == "")
    }
}
