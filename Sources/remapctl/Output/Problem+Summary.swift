import RemapWire

extension Problem {
    /// The one line remapctl prints for this problem:
    /// `<detail> (<code>, HTTP <status>)`.
    ///
    /// The code is the one the server sent. Without one it is the status's
    /// code when remap has only one code with that status, else `http-<status>`:
    /// a bare 409, say, could be any of five problems.
    ///
    /// - Parameters:
    ///   - httpStatus: The status of the response, which wins over the
    ///     document's own `status` member.
    ///   - reason: The status line's reason phrase, used when the document
    ///     has neither `detail` nor `title`.
    func summary(httpStatus: Int, reason: String) -> String {
        let code = code.nonEmpty ?? ProblemCode(status: httpStatus)?.rawValue ?? "http-\(httpStatus)"
        let text = detail.nonEmpty ?? title.nonEmpty ?? reason.nonEmpty ?? "request failed"
        return "\(text.singleLine) (\(code), HTTP \(httpStatus))"
    }

    /// The document's status; 500 when it gives none.
    var statusOr500: Int { status > 0 ? status : 500 }

    /// What a document that is not a problem still tells: the first line
    /// of a short text (say, a proxy's error page).
    init(plainText body: [UInt8]) {
        let text = String(decoding: body, as: UTF8.self)
        let firstLine = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        self.init(status: 0, code: "", title: "", detail: firstLine.count <= 200 ? firstLine : "")
    }
}

extension String {
    /// The text with line breaks folded into spaces, so a server message
    /// cannot break remapctl's one-line error contract.
    var singleLine: String {
        String(map { $0.isNewline ? " " : $0 })
    }

    /// The text, or `nil` when it is empty.
    var nonEmpty: String? { isEmpty ? nil : self }
}
