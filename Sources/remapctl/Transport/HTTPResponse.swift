/// A complete HTTP/1.1 response: status, headers, and the body with any
/// chunked transfer-coding already removed.
struct HTTPResponse: Sendable {
    var status: Int
    /// The status line's reason phrase, e.g. "Not Found"; may be empty.
    var reason: String
    /// Header fields in the order received; names keep the server's case.
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    /// The value of the first header named `name`, compared case-insensitively.
    func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.name.lowercased() == wanted }?.value
    }

    /// Whether the status is in the 2xx range.
    var isSuccess: Bool { (200..<300).contains(status) }
}
