import RemapCore
import RemapWire

extension Problem {
    /// The one table from RemapError to the API's problem codes.
    init(_ error: RemapError) {
        let code: ProblemCode
        switch error {
        case .notFound: code = .notFound
        case .alreadyExists: code = .alreadyExists
        case .invalidArgument: code = .invalidArgument
        case .inUse: code = .inUse
        case .shrinkNotAllowed: code = .shrinkNotAllowed
        case .poolUnavailable: code = .poolUnavailable
        case .supplierFailed: code = .supplierFailed
        case .noSpace(let requested, let available):
            self.init(.insufficientSpace, detail: error.description)
            requestedBytes = requested
            availableBytes = available
            return
        case .io, .internal: code = .internalError
        }
        self.init(code, detail: error.description)
    }
}
