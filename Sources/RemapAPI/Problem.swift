import RemapCore

/// An RFC 9457 problem: what every API error becomes. `code` is stable and
/// meant for programs; `detail` is for people.
public struct Problem: Error, Encodable, Sendable {
    public var type: String
    public var title: String
    public var status: Int
    public var detail: String
    public var code: String
    public var requestedBytes: UInt64?
    public var availableBytes: UInt64?
    /// For 405: the methods the resource accepts (sent as the Allow header).
    var allow: String?
    /// For 503: when to try again (sent as the Retry-After header).
    var retryAfterSeconds: Int?

    private enum CodingKeys: String, CodingKey {
        case type, title, status, detail, code, requestedBytes, availableBytes
    }

    public init(status: Int, code: String, title: String, detail: String) {
        self.type = "urn:remap:problem:\(code)"
        self.title = title
        self.status = status
        self.detail = detail
        self.code = code
    }

    static func invalidArgument(_ detail: String) -> Problem {
        Problem(status: 400, code: "invalid-argument", title: "Invalid argument", detail: detail)
    }

    static func notFound(_ detail: String) -> Problem {
        Problem(status: 404, code: "not-found", title: "Not found", detail: detail)
    }

    /// The one table from RemapError to HTTP.
    init(_ error: RemapError) {
        switch error {
        case .notFound:
            self.init(status: 404, code: "not-found", title: "Not found", detail: error.description)
        case .alreadyExists:
            self.init(status: 409, code: "already-exists", title: "Already exists", detail: error.description)
        case .invalidArgument:
            self.init(status: 400, code: "invalid-argument", title: "Invalid argument", detail: error.description)
        case .inUse:
            self.init(status: 409, code: "in-use", title: "In use", detail: error.description)
        case .shrinkNotAllowed:
            self.init(status: 409, code: "shrink-not-allowed", title: "Shrink not allowed", detail: error.description)
        case .poolUnavailable:
            self.init(status: 409, code: "pool-unavailable", title: "Pool unavailable", detail: error.description)
        case .supplierFailed:
            self.init(status: 409, code: "supplier-failed", title: "Supplier failed", detail: error.description)
        case .noSpace(let requested, let available):
            self.init(status: 507, code: "insufficient-space", title: "Insufficient space", detail: error.description)
            requestedBytes = requested
            availableBytes = available
        case .io, .internal:
            self.init(status: 500, code: "internal", title: "Internal error", detail: error.description)
        }
    }
}
