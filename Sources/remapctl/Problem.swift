/// An API error as remapd reports it: an RFC 9457 problem document
/// (`application/problem+json`) plus remap's short machine-readable `code`.
///
/// Every field is optional on decoding so that a proxy's or a half-written
/// error body still yields a usable message; ``code`` and ``detail`` fill the
/// gaps from the HTTP status.
struct Problem: Decodable, Equatable, Sendable {
    var type: String?
    var title: String?
    var status: Int?
    var detail: String?
    var code: String?
}

extension Problem {
    /// remap's error code for an HTTP status, for error bodies that lack one.
    static func code(forStatus status: Int) -> String {
        switch status {
        case 400: "invalid-argument"
        case 401, 403: "unauthorized"
        case 404: "not-found"
        case 405: "method-not-allowed"
        case 409: "already-exists"
        case 413: "payload-too-large"
        case 415: "unsupported-media-type"
        case 507: "insufficient-space"
        case 500...599: "internal"
        default: "http-\(status)"
        }
    }

    /// The one line remapctl prints for this problem:
    /// `<detail> (<code>, HTTP <status>)`.
    ///
    /// - Parameters:
    ///   - httpStatus: The status of the response, which wins over the
    ///     document's own `status` member.
    ///   - reason: The status line's reason phrase, used when the document
    ///     has neither `detail` nor `title`.
    func summary(httpStatus: Int, reason: String) -> String {
        let code = nonEmpty(self.code) ?? Self.code(forStatus: httpStatus)
        let text = nonEmpty(detail) ?? nonEmpty(title) ?? nonEmpty(reason) ?? "request failed"
        return "\(text.singleLine) (\(code), HTTP \(httpStatus))"
    }

    private func nonEmpty(_ text: String?) -> String? {
        guard let text, !text.isEmpty else { return nil }
        return text
    }
}

extension String {
    /// The text with line breaks folded into spaces, so a server message
    /// cannot break remapctl's one-line error contract.
    var singleLine: String {
        String(map { $0.isNewline ? " " : $0 })
    }
}
