import ArgumentParser
import Glibc

/// The options every remapctl command takes: where remapd is, how to
/// authenticate, and whether to print JSON for scripts or tables for people.
struct GlobalOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Path of remapd's API socket.",
            discussion: """
                Defaults to $REMAP_SOCKET, else the first that exists of \
                \(ServerAddress.defaultSocketPaths.joined(separator: ", ")).
                """,
            valueName: "path"),
        completion: .file())
    var socket: String?

    @Option(
        help: ArgumentHelp("Reach remapd over TCP instead, e.g. http://127.0.0.1:8080.", valueName: "url"),
        transform: { text in try ServerAddress(url: text) })
    var url: ServerAddress?

    @Option(help: ArgumentHelp("Bearer token for remapd's API.", valueName: "token"))
    var token: String?

    @Option(
        help: ArgumentHelp("File holding the bearer token.", valueName: "file"),
        completion: .file())
    var tokenFile: String?

    @Flag(help: "Print the server's JSON (pretty, sorted keys) instead of tables.")
    var json = false

    func validate() throws {
        if socket != nil && url != nil {
            throw ValidationError("Use either --socket or --url, not both.")
        }
        if socket?.isEmpty == true {
            throw ValidationError("--socket needs a path.")
        }
        if token != nil && tokenFile != nil {
            throw ValidationError("Use either --token or --token-file, not both.")
        }
        if let token, !BearerToken.isUsable(token) {
            throw ValidationError("--token must be non-empty, without spaces or control characters.")
        }
    }

    /// A client for the daemon these options point at.
    ///
    /// - Parameter timeoutSeconds: How long connecting and each wait for the
    ///   daemon may take; shell completion wants a short one.
    /// - Throws: ``ClientError`` when no socket can be found or the token file
    ///   cannot be read. Nothing is connected yet.
    func makeClient(timeoutSeconds: Int = 30) throws(ClientError) -> APIClient {
        let address = try ServerAddress.resolve(
            socket: socket, url: url, environment: Self.environment())
        let bearerToken = try tokenFile.map { (path) throws(ClientError) in try BearerToken.read(path: path) } ?? token
        return APIClient(
            connection: HTTPConnection(address: address, timeoutSeconds: timeoutSeconds), bearerToken: bearerToken)
    }

    private static func environment() -> [String: String] {
        var values: [String: String] = [:]
        if let socket = getenv(ServerAddress.socketEnvironmentVariable) {
            values[ServerAddress.socketEnvironmentVariable] = String(cString: socket)
        }
        return values
    }
}
