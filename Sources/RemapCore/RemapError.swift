/// Every failure remap reports, as a value with meaning. Each interface maps
/// it in one table: HTTP status and problem code (RemapAPI), NBD error
/// (RemapEngine), errno (FUSE).
public enum RemapError: Error, Equatable, Sendable {
    /// `kind` is what was looked for ("volume", "pool"), `name` its name.
    case notFound(kind: String, name: String)
    case alreadyExists(kind: String, name: String, detail: String)
    case invalidArgument(String)
    case inUse(String)
    /// A volume would get smaller, and the caller did not allow it.
    case shrinkNotAllowed(String)
    case noSpace(requestedBytes: UInt64, availableBytes: UInt64)
    /// The pool is degraded or offline: it cannot take the change now.
    case poolUnavailable(String)
    /// A supplier still fails the checks that would clear a pool's errors.
    case supplierFailed(String)
    /// A system call failed; `context` says what remap was doing.
    case io(errno: Int32, context: String)
    case `internal`(String)
}

extension RemapError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .notFound(let kind, let name): return "no \(kind) named '\(name)'"
        case .alreadyExists(_, _, let detail): return detail
        case .invalidArgument(let detail): return detail
        case .inUse(let detail): return detail
        case .shrinkNotAllowed(let detail): return detail
        case .noSpace(let requested, let available):
            return "insufficient space: \(requested) bytes requested, \(available) bytes available"
        case .poolUnavailable(let detail): return detail
        case .supplierFailed(let detail): return detail
        case .io(let errno, let context): return "\(context): errno \(errno)"
        case .internal(let detail): return detail
        }
    }
}
