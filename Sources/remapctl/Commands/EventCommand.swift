import ArgumentParser
import RemapWire

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

            remapctl prints the events remapd keeps (the last 1000; remapd \
            numbers them from 1 each time it starts), or those after --since \
            SEQ. With --follow it then stays connected and prints each new event \
            as it arrives, one line each (SEQ TIME TYPE POOL/VOLUME DETAIL, as \
            the table's columns); if the connection drops it reconnects and \
            resumes after the last event seen (notices go to standard error). \
            Ctrl-C ends it with status 0. With --json the list is remapd's JSON \
            document, and --follow prints one JSON object per line.

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
        Output.answer(try client.events(since: since), json: global.json) { Event.table($0.events) }
    }
}
