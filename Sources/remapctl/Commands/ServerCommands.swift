import ArgumentParser
import RemapWire

/// `remapctl version`: the client's and the daemon's versions.
struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Show the versions of remapctl and of the remapd it talks to.")

    @OptionGroup var global: GlobalOptions

    func run() throws {
        Output.answer(try global.makeClient().version(), json: global.json) { server in
            var fields = FieldList()
            fields.append("remapctl", RemapCtl.version)
            fields.append("remapd", server.version)
            fields.append("api", server.api)
            fields.append("engine", server.engine)
            return fields.rendered()
        }
    }
}

/// `remapctl health`: whether the daemon is up and serving.
struct HealthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Check that remapd is up; exits 0 when it reports ok.")

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let reply = try global.makeClient().health()
        Output.answer(reply, json: global.json) { $0.status + "\n" }
        if reply.value.status != "ok" {
            throw ExitCode.failure
        }
    }
}

/// `remapctl metrics`: the daemon's Prometheus metrics.
struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Print remapd's metrics in Prometheus text format.",
        discussion: """
            The text is printed exactly as remapd serves it on GET /metrics; it is \
            not JSON, so --json changes nothing.
            """)

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let text = try global.makeClient().metrics().value
        Output.print(text.isEmpty || text.hasSuffix("\n") ? text : text + "\n")
    }
}
