import RemapWire

extension APIClient {
    /// Polls `operation` every `pollMilliseconds` until it has ended
    /// (succeeded, failed, or any state with a finish time), calling
    /// `observe` with each answer.
    ///
    /// - Returns: The operation as it ended; whether it failed is the
    ///   caller's to judge.
    func waitForOperation(
        _ operation: Operation, pollMilliseconds: Int, observe: (Operation) -> Void
    ) throws(ClientError) -> Operation {
        var current = operation
        observe(current)
        while !current.hasEnded {
            Pause.milliseconds(pollMilliseconds)
            current = try self.operation(current.id).value
            observe(current)
        }
        return current
    }
}

extension ClientError {
    /// A failed operation as remapctl reports it: remapd's problem, its
    /// detail prefixed with what failed, e.g. `import of /x.raw into volume
    /// v failed: no space left (no-space, HTTP 507)`.
    static func failedOperation(_ operation: Operation, what: String) -> ClientError {
        var problem = operation.error
            ?? Problem(status: 0, code: ProblemCode.internalError.rawValue, title: "", detail: "")
        let reason = problem.detail.nonEmpty ?? problem.title.nonEmpty ?? "remapd gave no reason"
        problem.detail = "\(what) failed: \(reason)"
        return .problem(problem, httpStatus: problem.statusOr500, reason: "")
    }
}
