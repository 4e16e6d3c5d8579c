import Glibc

/// Where remapd's REST API listens: its unix socket, or a TCP address for a
/// daemon started with an HTTP listener.
enum ServerAddress: Equatable, Sendable, CustomStringConvertible {
    case unixSocket(path: String)
    case tcp(host: String, port: UInt16)

    /// Where remapd puts its socket, in the order remapctl looks for it: a
    /// daemon run from the current directory first, then the system daemon.
    static let defaultSocketPaths = [
        "./.remap/api.sock",
        "/run/remap/api.sock",
        "/var/lib/remap/api.sock",
    ]

    /// The environment variable that names the socket when `--socket` is not
    /// given.
    static let socketEnvironmentVariable = "REMAP_SOCKET"

    /// The address as error messages show it: the socket path or the URL.
    var description: String {
        switch self {
        case .unixSocket(let path): path
        case .tcp(let host, let port): "http://\(Self.bracketed(host)):\(port)"
        }
    }

    /// The value of the `Host` header. The daemon ignores it on the unix
    /// socket, but HTTP/1.1 requires one.
    var hostHeader: String {
        switch self {
        case .unixSocket: "remap"
        case .tcp(let host, let port): "\(Self.bracketed(host)):\(port)"
        }
    }

    private static func bracketed(_ host: String) -> String {
        host.contains(":") ? "[\(host)]" : host
    }
}

// MARK: - Choosing the address

extension ServerAddress {
    /// Picks the address from the command line and environment: `--url`, else
    /// `--socket`, else `$REMAP_SOCKET`, else the first default socket path
    /// that exists.
    ///
    /// - Throws: ``ClientError/noSocketFound(tried:)`` when nothing was given
    ///   and no default socket exists.
    static func resolve(
        socket: String?,
        url: ServerAddress?,
        environment: [String: String]
    ) throws(ClientError) -> ServerAddress {
        if let url {
            return url
        }
        if let socket {
            return .unixSocket(path: socket)
        }
        if let path = environment[socketEnvironmentVariable], !path.isEmpty {
            return .unixSocket(path: path)
        }
        guard let found = defaultSocketPaths.first(where: { access($0, F_OK) == 0 }) else {
            throw .noSocketFound(tried: defaultSocketPaths)
        }
        return .unixSocket(path: found)
    }
}

// MARK: - Parsing --url

extension ServerAddress {
    /// Why a `--url` value was refused.
    struct URLError: Error, CustomStringConvertible {
        let description: String
    }

    /// Parses `http://HOST[:PORT][/]`, where HOST may be a name, an IPv4
    /// address or a bracketed IPv6 address. The port defaults to 80.
    init(url: String) throws(URLError) {
        let scheme = "http://"
        guard url.lowercased().hasPrefix(scheme) else {
            throw URLError(description: "only http:// URLs are supported, e.g. http://127.0.0.1:8080")
        }
        var authority = url.dropFirst(scheme.count)
        if authority.hasSuffix("/") { authority = authority.dropLast() }
        guard !authority.contains("/"), !authority.contains("?"), !authority.contains("#") else {
            throw URLError(description: "the URL must not have a path; give only http://HOST:PORT")
        }
        guard !authority.contains("@") else {
            throw URLError(description: "the URL must not carry credentials; use --token")
        }

        let host: Substring
        let portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else {
                throw URLError(description: "unterminated IPv6 address")
            }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let rest = authority[authority.index(after: close)...]
            if rest.isEmpty {
                portText = nil
            } else if rest.hasPrefix(":") {
                portText = rest.dropFirst()
            } else {
                throw URLError(description: "unexpected text after the IPv6 address")
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
            portText = nil
        }

        guard !host.isEmpty else { throw URLError(description: "the URL has no host") }
        var port: UInt16 = 80
        if let portText {
            guard let parsed = UInt16(portText), parsed > 0 else {
                throw URLError(description: "the port must be a number from 1 to 65535")
            }
            port = parsed
        }
        self = .tcp(host: String(host), port: port)
    }
}
