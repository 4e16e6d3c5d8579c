/// An RFC 9457 problem (`application/problem+json`): what every error of
/// remapd's API becomes, and what remapctl reads back. ``code`` is stable and
/// meant for programs (see ``ProblemCode``); ``detail`` is for people.
public struct Problem: Error, Equatable, Sendable {
    /// `urn:remap:problem:<code>`.
    public var type: String
    public var title: String
    public var status: Int
    public var detail: String
    public var code: String
    /// For `insufficient-space`: what was asked for and what was there.
    public var requestedBytes: UInt64?
    public var availableBytes: UInt64?
    /// For 405: the methods the resource accepts, sent as the `Allow`
    /// header rather than in the document.
    public var allow: String?
    /// For 503: when to try again, sent as the `Retry-After` header.
    public var retryAfterSeconds: Int?

    /// The URN prefix of ``type``; the code follows it.
    public static let typePrefix = "urn:remap:problem:"

    public init(status: Int, code: String, title: String, detail: String) {
        self.type = code.isEmpty ? "" : Self.typePrefix + code
        self.title = title
        self.status = status
        self.detail = detail
        self.code = code
    }

    /// The problem `code` names, with its status and title from the table.
    public init(_ code: ProblemCode, detail: String) {
        self.init(status: code.status, code: code.rawValue, title: code.title, detail: detail)
    }

    public static func invalidArgument(_ detail: String) -> Problem {
        Problem(.invalidArgument, detail: detail)
    }

    public static func notFound(_ detail: String) -> Problem {
        Problem(.notFound, detail: detail)
    }
}

extension Problem: Codable {
    private enum CodingKeys: String, CodingKey {
        case type, title, status, detail, code, requestedBytes, availableBytes
    }

    /// Reads a problem document leniently, so that a proxy's or a
    /// half-written one still yields what it has: missing text is empty, a
    /// missing status 0. Without a `code` the code is taken from a
    /// `urn:remap:problem:` type, the problem's standard name.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        type = try container.decodeIfPresent(String.self, forKey: .type) ?? ""
        title = try container.decodeIfPresent(String.self, forKey: .title) ?? ""
        status = try container.decodeIfPresent(Int.self, forKey: .status) ?? 0
        detail = try container.decodeIfPresent(String.self, forKey: .detail) ?? ""
        code = try container.decodeIfPresent(String.self, forKey: .code)
            ?? (type.hasPrefix(Self.typePrefix) ? String(type.dropFirst(Self.typePrefix.count)) : "")
        requestedBytes = try container.decodeIfPresent(UInt64.self, forKey: .requestedBytes)
        availableBytes = try container.decodeIfPresent(UInt64.self, forKey: .availableBytes)
    }
}
