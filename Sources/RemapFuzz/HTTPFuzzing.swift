import Foundation
import RemapAPI
import RemapCore

/// The REST target: an input is read as a small HTTP request and answered by
/// a `Router` over `FixtureControlPlane`, the way `HTTPServer` hands
/// libmicrohttpd's requests to it. The input's layout, so seeds stay
/// readable (every input is some request; missing parts are empty):
///
///     METHOD SP PATH["?" QUERY] LF
///     (NAME ":" VALUE LF)*          Content-Type, Accept, Last-Event-ID, Range
///     LF
///     BODY
///
/// Query pairs are split on `&` and the first `=` and passed as they are
/// (the router gets them percent-decoded, so any string is possible).
/// Method, path and header values end at a NUL byte, as the C strings
/// libmicrohttpd gives do.
enum HTTPFuzzing {
    static func run(_ input: [UInt8]) {
        let request = request(from: input)
        // A router per input: its /metrics counters must not pile up across inputs.
        let router = Router(control: FixtureControlPlane())
        let response = router.handle(request)
        check(response, to: request)
        followNextPage(response, of: request, router)
        checkSize(input)
    }

    static func request(from input: [UInt8]) -> HTTPRequest {
        var lines = input.split(separator: UInt8(ascii: "\n"), maxSplits: 1, omittingEmptySubsequences: false)
        let first = lines.removeFirst()
        var rest = lines.first ?? []
        let requestLine = first.split(separator: UInt8(ascii: " "), maxSplits: 1, omittingEmptySubsequences: false)
        let target = cString(requestLine.count > 1 ? requestLine[1] : [])
        let question = target.firstIndex(of: "?")
        var request = HTTPRequest(method: cString(requestLine[0]),
                                  path: question.map { String(target[..<$0]) } ?? target)
        if let question {
            request.query = target[target.index(after: question)...].split(separator: "&").map { pair in
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
            }
        }
        while !rest.isEmpty && rest.first != UInt8(ascii: "\n") {
            let line = rest.prefix { $0 != UInt8(ascii: "\n") }
            rest = rest.dropFirst(line.count + 1)
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let value = cString(line[(colon + 1)...]).trimmingCharacters(in: .whitespaces)
            switch cString(line[..<colon]).lowercased() {
            case "content-type": request.contentType = value
            case "accept": request.accept = value
            case "last-event-id": request.lastEventID = value
            case "range": request.range = value
            default: break
            }
        }
        request.body = Array(rest.dropFirst())
        return request
    }

    private static func cString(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    // MARK: - Invariants

    /// What every answer must be, whatever was asked: a status the fixture can
    /// cause (nothing in it fails, so never 5xx), and a body that is what
    /// its content type says.
    static func check(_ response: HTTPResponse, to request: HTTPRequest) {
        let status = response.status
        expect((200..<500).contains(status), "status \(status)", request, response)
        switch response.contentType {
        case "application/problem+json":
            let problem = json(response.body) as? [String: Any]
            expect(problem?["status"] as? Int == status, "problem body's status is not \(status)", request, response)
            expect((problem?["code"] as? String)?.isEmpty == false, "problem without a code", request, response)
        case "application/json":
            expect(json(response.body) != nil, "body is not JSON", request, response)
        default:
            break
        }
        if status == 206 {
            // bytes FIRST-LAST/SIZE with FIRST <= LAST < SIZE.
            let range = response.headers.first { $0.0 == "Content-Range" }?.1 ?? ""
            let numbers = range.dropFirst("bytes ".count).split(whereSeparator: { $0 == "-" || $0 == "/" }).compactMap { UInt64($0) }
            expect(range.hasPrefix("bytes ") && numbers.count == 3 && numbers[0] <= numbers[1] && numbers[1] < numbers[2],
                   "Content-Range '\(range)'", request, response)
        }
    }

    /// A page token the server gave must lead to the page after, every
    /// volume of it named after the last one of this page.
    private static func followNextPage(_ response: HTTPResponse, of request: HTTPRequest, _ router: Router) {
        guard response.status == 200, request.path == "/v1/volumes",
              let list = json(response.body) as? [String: Any], let token = list["nextPageToken"] as? String,
              let last = ((list["volumes"] as? [[String: Any]])?.last?["name"]) as? String
        else { return }
        var next = request
        next.query = request.query.filter { $0.name != "pageToken" } + [("pageToken", token)]
        let following = router.handle(next)
        let names = ((json(following.body) as? [String: Any])?["volumes"] as? [[String: Any]])?.compactMap { $0["name"] as? String }
        expect(following.status == 200 && names?.allSatisfy { $0 > last } == true,
               "page token '\(token)' after '\(last)' did not lead to the next page", next, following)
    }

    /// Sizes as operators write them: one that parses reads back the same from its digits.
    private static func checkSize(_ input: [UInt8]) {
        let text = String(decoding: input.prefix(64), as: UTF8.self)
        guard let size = ByteCount.parse(text) else { return }
        if ByteCount.parse(String(size)) != size || ByteCount.format(size).isEmpty {
            fatalError("size '\(text)' parsed as \(size), which does not read back")
        }
    }

    private static func json(_ body: [UInt8]) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(body))
    }

    private static func expect(_ condition: Bool, _ what: String, _ request: HTTPRequest, _ response: HTTPResponse) {
        guard !condition else { return }
        fatalError("""
            \(what): \(request.method) \(request.path) query \(request.query) \
            answered \(response.status) \(String(decoding: response.body.prefix(400), as: UTF8.self))
            """)
    }
}
