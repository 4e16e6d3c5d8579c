import Glibc

/// Where NBD clients reach remapd's exports, as far as remapctl can tell.
///
/// The API does not say where the NBD socket is. remapd's layout puts it in
/// the API socket's directory as `nbd.sock`, so that is the guess unless
/// `--nbd-socket` says otherwise; over TCP there is nothing to guess from.
enum NBDSocket: Equatable, Sendable {
    case known(path: String)
    /// Derived from the API socket; `exists` tells whether a socket is
    /// there (it may be on another host's path, so it is only a hint).
    case guessed(path: String, exists: Bool)
    case unknown(reason: String)

    /// The file name remapd gives its NBD socket next to its API socket.
    static let fileName = "nbd.sock"

    /// The NBD socket for a daemon reached at `address`, or `explicit` when
    /// the user named it.
    static func locate(explicit: String?, address: ServerAddress) -> NBDSocket {
        if let explicit {
            // A URI used elsewhere must not depend on where remapctl ran.
            return .known(path: WorkingDirectory.absolute(explicit))
        }
        switch address {
        case .unixSocket(let path):
            let api = WorkingDirectory.absolute(path)
            let directory = api.lastIndex(of: "/").map { String(api[..<$0]) } ?? "."
            let nbd = (directory.isEmpty ? "" : directory) + "/" + fileName
            return .guessed(path: nbd, exists: access(nbd, F_OK) == 0)
        case .tcp:
            return .unknown(reason: "remapd is reached over TCP; give --nbd-socket PATH")
        }
    }

    /// The `nbd+unix://` URI of export `name`, or `nil` when the socket is
    /// unknown.
    func uri(export name: String) -> String? {
        switch self {
        case .known(let path), .guessed(let path, _):
            // `+` is a plain path character in a URI, and default export
            // names (`VOLUME+ID`) read better without `%2B`.
            "nbd+unix:///\(PathComponent.percentEncoded(name, allowing: [UInt8(ascii: "+")]))"
                + "?socket=\(PathComponent.percentEncoded(path, allowing: [UInt8(ascii: "/")]))"
        case .unknown:
            nil
        }
    }

    /// What to print after the URI so nobody mistakes a guess for a fact.
    var caveat: String? {
        switch self {
        case .known, .guessed(_, true):
            nil
        case .guessed(let path, false):
            "no socket at \(path) on this host; give --nbd-socket PATH if remapd's is elsewhere"
        case .unknown(let reason):
            "NBD socket unknown: \(reason)"
        }
    }
}
