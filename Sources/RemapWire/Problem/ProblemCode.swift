/// remap's stable error codes, each with the HTTP status remapd answers it
/// with and its title: the one table remapd answers from and remapctl reads
/// answers by (docs/api-v1.md lists the same).
public enum ProblemCode: String, CaseIterable, Sendable {
    case invalidArgument = "invalid-argument"
    case unauthorized = "unauthorized"
    case notFound = "not-found"
    case methodNotAllowed = "method-not-allowed"
    case alreadyExists = "already-exists"
    case inUse = "in-use"
    case shrinkNotAllowed = "shrink-not-allowed"
    case poolUnavailable = "pool-unavailable"
    case supplierFailed = "supplier-failed"
    case payloadTooLarge = "payload-too-large"
    case unsupportedMediaType = "unsupported-media-type"
    case rangeNotSatisfiable = "range-not-satisfiable"
    case internalError = "internal"
    case tooManyStreams = "too-many-streams"
    case insufficientSpace = "insufficient-space"

    private var entry: (status: Int, title: String) {
        switch self {
        case .invalidArgument: (400, "Invalid argument")
        case .unauthorized: (401, "Unauthorized")
        case .notFound: (404, "Not found")
        case .methodNotAllowed: (405, "Method not allowed")
        case .alreadyExists: (409, "Already exists")
        case .inUse: (409, "In use")
        case .shrinkNotAllowed: (409, "Shrink not allowed")
        case .poolUnavailable: (409, "Pool unavailable")
        case .supplierFailed: (409, "Supplier failed")
        case .payloadTooLarge: (413, "Payload too large")
        case .unsupportedMediaType: (415, "Unsupported media type")
        case .rangeNotSatisfiable: (416, "Range not satisfiable")
        case .internalError: (500, "Internal error")
        case .tooManyStreams: (503, "Too many event streams")
        case .insufficientSpace: (507, "Insufficient space")
        }
    }

    /// The HTTP status remapd sends this code with.
    public var status: Int { entry.status }

    /// The problem's `title`.
    public var title: String { entry.title }

    /// The code a bare `status` stands for, when remap has exactly one code
    /// with that status; `nil` when it has several (409) or none, since the
    /// status alone cannot tell which problem it was.
    public init?(status: Int) {
        let codes = Self.allCases.filter { $0.status == status }
        guard codes.count == 1 else { return nil }
        self = codes[0]
    }
}
