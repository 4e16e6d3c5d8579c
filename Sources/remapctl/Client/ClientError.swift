import RemapWire
/// Everything that can go wrong between remapctl and remapd once the command
/// line has been accepted. remapctl prints ``message`` as one line on
/// standard error and exits with status 1.
enum ClientError: Error, Equatable {
    /// No `--socket`, no `$REMAP_SOCKET`, and none of the default sockets exist.
    case noSocketFound(tried: [String])
    /// Opening or connecting the socket failed.
    case cannotConnect(ServerAddress, Errno)
    /// The host of `--url` could not be resolved.
    case cannotResolve(host: String, reason: String)
    /// Sending the request or receiving the response failed midway.
    case connectionLost(ServerAddress, Errno)
    /// remapd did not answer within the timeout.
    case timedOut(ServerAddress, seconds: Int)
    /// The bytes remapd sent are not a valid HTTP/1.1 response.
    case malformedResponse(String)
    /// The response is valid HTTP but its JSON is not what the API promises.
    case unexpectedBody(path: String, reason: String)
    /// remapd answered with an error status.
    case problem(Problem, httpStatus: Int, reason: String)
    /// The `--token-file` could not be read or holds no usable token.
    case unreadableTokenFile(path: String, reason: String)
    /// A name given on the command line matches nothing the daemon has
    /// (looked up by remapctl itself, e.g. a supplier given by path), or
    /// more than one thing.
    case lookupFailed(String)
    /// A file remapctl itself reads or writes (the output of `snapshot
    /// export`) could not be used.
    case localFile(path: String, reason: String)

    /// The one-line explanation printed after `remapctl: `.
    var message: String {
        switch self {
        case .noSocketFound(let tried):
            "cannot connect to remapd at \(tried.joined(separator: ", ")): "
                + "\(Errno.noSuchFileOrDirectory) (use --socket or $\(ServerAddress.socketEnvironmentVariable))"
        case .cannotConnect(let address, let error):
            "cannot connect to remapd at \(address): \(error)"
        case .cannotResolve(let host, let reason):
            "cannot connect to remapd: cannot resolve '\(host)': \(reason)"
        case .connectionLost(let address, let error):
            "lost connection to remapd at \(address): \(error)"
        case .timedOut(let address, let seconds):
            "remapd at \(address) did not answer within \(seconds) seconds"
        case .malformedResponse(let reason):
            "malformed response from remapd: \(reason)"
        case .unexpectedBody(let path, let reason):
            "unexpected response from remapd for \(path): \(reason)"
        case .problem(let problem, let httpStatus, let reason):
            problem.summary(httpStatus: httpStatus, reason: reason)
        case .unreadableTokenFile(let path, let reason):
            "cannot read token file \(path): \(reason)"
        case .lookupFailed(let explanation):
            explanation
        case .localFile(let path, let reason):
            "\(path): \(reason)"
        }
    }
}
