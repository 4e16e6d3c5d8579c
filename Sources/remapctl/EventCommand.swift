import ArgumentParser

/// `remapctl events [--since SEQ] [--follow]`: what remapd reports about
/// space.
struct EventCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Show remapd's space events; --follow prints them as they happen.",
        discussion: """
            Events: pool.low-space (a pool's committed space, allocated + \
            reserved, crossed one of its thresholds upward; see pool set \
            --thresholds), pool.no-space (a write failed for lack of space), \
            reservation.expired, reservation.released, pool.grown.

            Without --follow remapctl prints the events remapd keeps (the last \
            1000), or those after --since SEQ, and exits. With --follow it stays \
            connected and prints each event on one line as it arrives, resuming \
            after the last one seen if the connection drops (a notice goes to \
            standard error); Ctrl-C ends it with status 0. With --json the list \
            is remapd's JSON document, and --follow prints one JSON object per \
            line.

              remapctl events --follow | grep --line-buffered low-space
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: ArgumentHelp("Only events after this sequence number.", valueName: "seq"))
    var since: Int?

    @Flag(help: "Keep printing events as they happen, until interrupted.")
    var follow = false

    func validate() throws {
        if let since, since < 0 { throw ValidationError("--since must be 0 or more.") }
    }

    func run() throws {
        let client = try global.makeClient()
        if follow {
            var follower = EventFollower(client: client, json: global.json, since: since)
            try follower.run()
        }
        let reply = try client.events(since: since)
        if global.json {
            Output.printJSON(reply.body)
            return
        }
        Output.print(Event.table(reply.value.events))
    }
}
