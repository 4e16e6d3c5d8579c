import ArgumentParser
import Glibc
import RemapAPI
import RemapCore
import RemapEngine
import RemapLog
import RemapStore
import struct RemapWire.ByteSize

/// The remap daemon: REST control plane, NBD data path, metadata.
@main
struct Remapd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remapd",
        abstract: "Serve thin block volumes that tell the truth about space.",
        usage: """
            remapd [--state-dir <state-dir>] [<options>]     (serves; see OPTIONS)
            remapd check --state-dir <state-dir> [--json]    (checks a stopped remapd's metadata)
            """,
        version: remapVersion,
        subcommands: [CheckCommand.self])

    @Option(help: "Directory for metadata and the default pool's file (default: $STATE_DIRECTORY, else /var/lib/remap).")
    var stateDir: String?

    @Option(help: "Unix socket for the REST API (default: STATE_DIR/api.sock).")
    var apiSocket: String?

    @Option(help: "Also serve the REST API on TCP HOST:PORT (off unless given).")
    var apiListen: String?

    @Option(help: "Unix socket for NBD (default: STATE_DIR/nbd.sock).")
    var nbdSocket: String?

    @Option(help: "Also serve NBD on TCP HOST:PORT (off unless given; 10809 is NBD's port). Needs TLS credentials or --nbd-insecure.")
    var nbdListen: String?

    @Option(help: "TLS pre-shared keys for NBD on TCP: a file of USERNAME:HEXKEY lines (psktool -u NAME -p FILE makes one).")
    var nbdTlsPsk: String?

    @Option(help: "TLS certificate for NBD on TCP: a directory with server-cert.pem, server-key.pem and ca-cert.pem.")
    var nbdTlsCertificates: String?

    @Flag(help: "With --nbd-tls-certificates: require client certificates signed by the directory's ca-cert.pem.")
    var nbdTlsVerifyPeer = false

    @Flag(help: "Serve NBD on TCP without TLS: anyone who reaches --nbd-listen can read and write every volume.")
    var nbdInsecure = false

    @Option(help: "Size of the default pool created on first start, e.g. 4G, 512M, 1.5G, 1073741824.")
    var defaultPoolSize: String = "4G"

    @Option(help: "Seconds an NBD client may take to choose an export before it is dropped.")
    var nbdHandshakeTimeout: Int = Limits().nbdHandshakeTimeoutSeconds

    @Option(help: "NBD connections served at once (unix and TCP); more are closed at once.")
    var nbdMaxConnections: Int = Limits().nbdMaxConnections

    @Option(help: "Reply bytes queued on one NBD connection before remapd stops reading its requests (a size: 64M).")
    var nbdReplyQueue: String = "\(Limits().nbdReplyQueueBytes >> 20)M"

    @Option(help: "Options one NBD client may send before choosing an export.")
    var nbdMaxOptions: Int = Limits().nbdMaxOptions

    @Option(help: "Seconds an NBD request's payload may stay incomplete before the connection is dropped.")
    var nbdRequestTimeout: Int = Limits().nbdRequestTimeoutSeconds

    @Option(help: "Seconds an NBD client may leave its replies unread (no byte taken) before the connection is dropped.")
    var nbdReplyTimeout: Int = Limits().nbdReplyTimeoutSeconds

    @Option(help: "HTTP connections served at once, per API listener.")
    var httpMaxConnections: Int = Limits().httpMaxConnections

    @Option(help: "HTTP connections from one IP address at once (TCP API).")
    var httpMaxConnectionsPerIp: Int = Limits().httpMaxConnectionsPerIP

    @Option(help: "Seconds an HTTP client may take to send a complete request.")
    var httpRequestTimeout: Int = Limits().httpRequestTimeoutSeconds

    @Option(help: "Event streams (GET /v1/events followers) open at once, per API listener.")
    var httpMaxEventStreams: Int = Limits().httpMaxEventStreams

    @Option(help: "Chunks one pool may have (capacity / chunk size).")
    var maxChunksPerPool: UInt64 = Limits().maxChunksPerPool

    @Option(help: "I/O engine: io_uring, threads (portable), or auto (io_uring when the kernel allows it).")
    var engine: String = "auto"

    @Option(help: "Directory new file suppliers must lie under (default: STATE_DIR/pools).")
    var supplierDir: String?

    @Option(help: "Bearer token file for the TCP API, created (mode 0600) if missing (default: STATE_DIR/api.token).")
    var apiTokenFile: String?

    @Option(help: "Group that may use the API unix socket (mode 0660); default: the daemon's group.")
    var apiSocketGroup: String?

    @Option(help: "Least important messages logged: debug (also one line per API request), info, notice, warning or error.")
    var logLevel: String = "info"

    /// The levels --log-level takes, least important first.
    static let logLevels: [Logger.Level] = [.debug, .info, .notice, .warning, .error]

    @Flag(help: ArgumentHelp(
        "Tests only (debug builds): inject faults into supplier I/O and metadata commits, from $REMAP_FAULTS and /v1/debug/faults.",
        visibility: .hidden))
    var faultInjection = false

    func validate() throws {
        _ = try limits()
        guard Logger.Level(rawValue: logLevel).map(Self.logLevels.contains) == true else {
            throw ValidationError("--log-level must be one of: \(Self.logLevels.map(\.rawValue).joined(separator: ", "))")
        }
        guard Engine.Kind(rawValue: engine) != nil else {
            throw ValidationError("--engine must be one of: \(Engine.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let apiSocketGroup, getgrnam(apiSocketGroup) == nil {
            throw ValidationError("--api-socket-group '\(apiSocketGroup)': no such group")
        }
        let size = try Self.size("default-pool-size", defaultPoolSize)
        guard size >= Pool.defaultChunkSize else {
            throw ValidationError("--default-pool-size must be at least one chunk (\(Pool.defaultChunkSize) bytes)")
        }
        try validateNBDSecurity()
        if faultInjection && !FaultInjector.isAvailable {
            throw ValidationError("--fault-injection is for tests and only exists in debug builds")
        }
    }

    func run() throws {
        // Before any other thread exists (see `log`).
        log.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        do {
            try serve()
        } catch {
            log.error("cannot start: \(error)")
            throw ExitCode(1)
        }
    }

    private func serve() throws(RemapError) {
        // Bad credentials stop remapd before it touches anything.
        let nbdTLS = try nbdTLSCredentials()
        let stateDirectory = absolute(stateDir ?? environmentStateDirectory ?? "/var/lib/remap")
        try SupplierFile.makeDirectories(stateDirectory, mode: 0o750)
        let lock = try lockStateDirectory(stateDirectory)
        defer { close(lock) }

        // SIGTERM and SIGINT are taken by sigwait below; every thread started
        // from here on inherits the mask.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGTERM)
        sigaddset(&signals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        signal(SIGPIPE, SIG_IGN)

        let store = try MetadataStore(path: stateDirectory + "/metadata.db")
        let suppliers = absolute(supplierDir ?? stateDirectory + "/pools")
        try SupplierFile.makeDirectories(suppliers, mode: 0o750)
        let faults = FaultInjector()
        if faultInjection {
            try faults.enable(rules: try FaultRules.fromEnvironment())
            log.warning("fault injection is on (tests only): rules from $REMAP_FAULTS and /v1/debug/faults")
        }
        let engine = try Engine(store: store, supplierDirectory: suppliers,
                                kind: Engine.Kind(rawValue: self.engine) ?? .auto, faults: faults)
        engine.limits = try! limits()  // invariant: checked in validate(); before the default pool is made
        let token = try APIToken.load(orCreateAt: absolute(apiTokenFile ?? stateDirectory + "/api.token"))
        let poolSize = (try? Self.size("default-pool-size", defaultPoolSize))!  // invariant: checked in validate()
        try engine.bootstrapPool(name: "default", path: stateDirectory + "/pools/default.img", sizeBytes: poolSize)

        let runtimeDirectory = environmentDirectory("RUNTIME_DIRECTORY")
        let apiPath = absolute(apiSocket ?? (runtimeDirectory ?? stateDirectory) + "/api.sock")
        let nbdPath = absolute(nbdSocket ?? (runtimeDirectory ?? stateDirectory) + "/nbd.sock")
        var socketPaths: [String] = []
        defer { for path in socketPaths { unlink(path) } }

        // Sockets systemd passed (matched by FileDescriptorName=) are adopted;
        // the others are bound here.
        var activated = Systemd.activatedSockets()
        let apiUnix: Int32
        var apiWhere = "unix:\(apiPath)"
        var nbdWhere = "unix:\(nbdPath)"
        if let fd = activated.removeValue(forKey: "api") {
            apiUnix = fd
            apiWhere = "socket-activated fd \(fd)"
        } else {
            apiUnix = try SocketListener.unix(path: apiPath)
            socketPaths.append(apiPath)
            if let apiSocketGroup { try SocketListener.setGroup(of: apiPath, to: apiSocketGroup) }
        }
        let nbdUnix: Int32
        if let fd = activated.removeValue(forKey: "nbd") {
            // It is served plain: TCP would bypass the TLS that --nbd-listen demands.
            guard SocketListener.isUnix(fd) else {
                throw .invalidArgument("the socket-activated 'nbd' socket is not a unix socket: NBD on TCP is served "
                                       + "with --nbd-listen and TLS credentials, not by socket activation")
            }
            nbdUnix = fd
            nbdWhere = "socket-activated fd \(fd)"
        } else {
            nbdUnix = try SocketListener.unix(path: nbdPath)
            socketPaths.append(nbdPath)
        }
        for (name, fd) in activated {
            log.warning("ignoring activated socket '\(name)' (expected FileDescriptorName=api or nbd)")
            close(fd)
        }
        let apiTCP = try apiListen.map { (address) throws(RemapError) in try SocketListener.tcp(address) }
        let nbdTCP = try nbdListen.map { (address) throws(RemapError) in try SocketListener.tcp(address) }

        if let interval = Systemd.watchdogInterval {
            // Pinged from the engine thread: if the data path hangs, so do the pings.
            engine.setHeartbeat(every: interval / 3) { Systemd.notify("WATCHDOG=1") }
        }
        let limits = engine.limits
        // Room for metadata commits on the state directory's filesystem.
        engine.metadataReserve = try MetadataReserve(path: stateDirectory + "/metadata.reserve")
        engine.start()
        engine.serveNBD(listener: nbdUnix)
        if let nbdTCP { engine.serveNBD(listener: nbdTCP, tls: nbdTLS) }

        let router = Router(control: engine)
        var servers: [HTTPServer] = []
        // The unix socket's permissions are its access control; TCP needs the
        // token, also when systemd passed a TCP socket as "api".
        for (fd, tcp) in [(apiUnix, !SocketListener.isUnix(apiUnix))] + (apiTCP.map { [($0, true)] } ?? []) {
            let server = HTTPServer(router: router, token: tcp ? token : nil, limits: limits)
            try server.start(listenFD: fd, tcp: tcp)
            servers.append(server)
        }

        for pool in engine.poolInfos() {
            log.info("pool '\(pool.name)': \(ByteCount.format(pool.capacityBytes)) in \(pool.suppliers.count) supplier(s), \(ByteCount.format(pool.allocatedBytes)) allocated, chunk \(ByteCount.format(pool.chunkSizeBytes))")
        }
        log.notice("serving \(engine.volumeInfos().count) volume(s) with the \(engine.name) engine; state in \(stateDirectory)")
        let apiAlso = apiListen.map { " and http://\($0)" } ?? ""
        let nbdAlso = nbdListen.map { nbdTLS == nil ? " and nbd://\($0)" : " and nbds://\($0)" } ?? ""
        log.info("REST API on \(apiWhere)\(apiAlso)")
        log.info("NBD on \(nbdWhere)\(nbdAlso)")
        if let nbdListen {
            if let nbdTLS {
                log.info("NBD on \(nbdListen) requires \(nbdTLS.summary)")
                for warning in nbdTLS.warnings { log.warning("WARNING: \(warning)") }
            } else {
                log.warning("WARNING: NBD on TCP \(nbdListen) WITHOUT TLS (--nbd-insecure): anyone who can reach it can list, read and write every volume and snapshot")
            }
        }
        Systemd.notify("READY=1\nSTATUS=serving \(engine.volumeInfos().count) volume(s)")

        var received: Int32 = 0
        sigwait(&signals, &received)
        log.notice("received \(received == SIGTERM ? "SIGTERM" : "SIGINT"), stopping")
        Systemd.notify("STOPPING=1\nSTATUS=stopping: finishing in-flight I/O")
        for server in servers { server.stop() }
        engine.stop()
        log.notice("stopped cleanly")
    }

    /// The bounds the flags set, each checked for a sensible range.
    func limits() throws(ValidationError) -> Limits {
        func within<T: BinaryInteger>(_ flag: String, _ value: T, _ range: ClosedRange<T>, _ unit: String = "") throws(ValidationError) -> T {
            guard range.contains(value) else {
                throw ValidationError("--\(flag) must be from \(range.lowerBound) to \(range.upperBound)\(unit)")
            }
            return value
        }
        var limits = Limits()
        limits.nbdHandshakeTimeoutSeconds = try within("nbd-handshake-timeout", nbdHandshakeTimeout, 1...3600, " seconds")
        limits.nbdRequestTimeoutSeconds = try within("nbd-request-timeout", nbdRequestTimeout, 1...3600, " seconds")
        limits.nbdReplyTimeoutSeconds = try within("nbd-reply-timeout", nbdReplyTimeout, 1...3600, " seconds")
        limits.nbdMaxConnections = try within("nbd-max-connections", nbdMaxConnections, 1...1_000_000)
        limits.nbdMaxOptions = try within("nbd-max-options", nbdMaxOptions, 16...1_000_000)
        let queue = try Self.size("nbd-reply-queue", nbdReplyQueue)
        // At least one largest read (32 MiB) must fit, or such a read could never be answered.
        limits.nbdReplyQueueBytes = try within("nbd-reply-queue", queue, (32 << 20)...(1 << 40), " bytes")
        limits.httpMaxConnections = try within("http-max-connections", httpMaxConnections, 4...65536)
        limits.httpMaxConnectionsPerIP = try within("http-max-connections-per-ip", httpMaxConnectionsPerIp, 1...65536)
        limits.httpRequestTimeoutSeconds = try within("http-request-timeout", httpRequestTimeout, 1...3600, " seconds")
        limits.httpMaxEventStreams = try within("http-max-event-streams", httpMaxEventStreams, 1...65536)
        limits.maxChunksPerPool = try within("max-chunks-per-pool", maxChunksPerPool, 1...(1 << 40))
        return limits
    }

    /// The bytes a size flag names, in the size grammar remapctl reads too
    /// (`1073741824`, `512M`, `1.5G`, `4GiB`).
    private static func size(_ flag: String, _ text: String) throws(ValidationError) -> UInt64 {
        do {
            return UInt64(try ByteSize(parsing: text).bytes)
        } catch {
            throw ValidationError("--\(flag) '\(text)': \(error)")
        }
    }

    /// --nbd-listen needs a credential, or the explicit --nbd-insecure;
    /// credentials are for TCP only, and one kind at a time.
    private func validateNBDSecurity() throws(ValidationError) {
        let credentials = [nbdTlsPsk.map { _ in "--nbd-tls-psk" }, nbdTlsCertificates.map { _ in "--nbd-tls-certificates" }].compactMap { $0 }
        if credentials.count > 1 {
            throw ValidationError("give one of --nbd-tls-psk and --nbd-tls-certificates, not both")
        }
        if nbdTlsVerifyPeer && nbdTlsCertificates == nil {
            throw ValidationError("--nbd-tls-verify-peer checks client certificates: it needs --nbd-tls-certificates")
        }
        if nbdInsecure && !credentials.isEmpty {
            throw ValidationError("--nbd-insecure turns TLS off, and \(credentials[0]) turns it on: give one")
        }
        if nbdListen == nil, let flag = credentials.first ?? (nbdInsecure ? "--nbd-insecure" : nil) {
            throw ValidationError("\(flag) is about NBD on TCP: give --nbd-listen HOST:PORT too (the unix socket is always plain)")
        }
        if let nbdListen, credentials.isEmpty && !nbdInsecure {
            throw ValidationError("""
                --nbd-listen \(nbdListen) needs TLS credentials: give --nbd-tls-psk FILE or --nbd-tls-certificates DIR \
                (or --nbd-insecure to serve NBD on TCP without any: anyone who can reach it could read and write every volume)
                """)
        }
    }

    /// The credentials TCP NBD clients must present, loaded (nil under --nbd-insecure or without --nbd-listen).
    private func nbdTLSCredentials() throws(RemapError) -> TLSCredentials? {
        if let nbdTlsPsk { return try TLSCredentials(pskFile: absolute(nbdTlsPsk)) }
        if let nbdTlsCertificates {
            return try TLSCredentials(certificateDirectory: absolute(nbdTlsCertificates), verifyPeer: nbdTlsVerifyPeer)
        }
        return nil
    }

    private var environmentStateDirectory: String? { environmentDirectory("STATE_DIRECTORY") }

    /// A directory systemd passes (StateDirectory=, RuntimeDirectory=): a
    /// colon-separated list when several are configured; remapd uses the first.
    private func environmentDirectory(_ variable: String) -> String? {
        guard let value = getenv(variable) else { return nil }
        return String(cString: value).split(separator: ":").first.map(String.init)
    }

    private func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        let cwd = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return cwd + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
    }

    /// One daemon per state directory: a second one fails here, clearly,
    /// instead of corrupting the first one's metadata.
    private func lockStateDirectory(_ path: String) throws(RemapError) -> Int32 {
        let lockPath = path + "/remapd.lock"
        let fd = try systemCall("opening \(lockPath)") { open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            throw .inUse("another remapd is already using state directory \(path)")
        }
        return fd
    }
}

extension Engine: ControlPlane {
    public var engineName: String { name }

    public func events(after seq: UInt64) -> (events: [Event], last: UInt64) {
        events.events(after: seq)
    }

    public func operationInfos() -> [OperationInfo] { operations.all() }

    public func faultState() -> FaultState? { faults.isEnabled ? faults.snapshot : nil }

    public func setFaultRules(_ rules: [FaultRule]) throws(RemapError) -> FaultState {
        guard faults.isEnabled else { throw .notFound(kind: "resource", name: "/v1/debug/faults") }
        faults.setRules(rules)
        return faults.snapshot
    }

    public func operationInfo(_ id: String) throws(RemapError) -> OperationInfo {
        guard let operation = operations.find(id) else { throw .notFound(kind: "operation", name: id) }
        return operation
    }
}
