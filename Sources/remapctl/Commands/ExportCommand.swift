import ArgumentParser
import RemapWire

/// `remapctl export …`: the NBD exports volumes are served under.
struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Add, list and remove NBD exports of volumes.",
        discussion: """
            Every volume is exported under its own name. An extra export of a \
            volume can be bound to a pooled reservation: writes through it draw on \
            the reservation first, so they do not fail for lack of space while it \
            lasts.

            The API does not tell where remapd's NBD socket is. remapctl assumes \
            it is nbd.sock next to the API socket (remapd's layout) unless \
            --nbd-socket says otherwise; over --url it cannot tell.
            """,
        subcommands: [Create.self, List.self, Delete.self])

    /// Where the NBD socket is, for printing URIs.
    struct NBDSocketOption: ParsableArguments {
        @Option(
            help: ArgumentHelp(
                "remapd's NBD socket, for the URIs (default: nbd.sock next to the API socket).",
                valueName: "path"),
            completion: .file())
        var nbdSocket: String?

        func validate() throws {
            if nbdSocket?.isEmpty == true { throw ValidationError("--nbd-socket needs a path.") }
        }

        /// The NBD socket of the daemon `client` talks to.
        func locate(for client: APIClient) -> NBDSocket {
            NBDSocket.locate(explicit: nbdSocket, address: client.connection.address)
        }
    }
}

extension ExportCommand {
    /// `remapctl export create VOLUME [--reservation ID] [--name N]`
    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add an NBD export of a volume, optionally bound to a pooled reservation.",
            discussion: """
                  id=$(remapctl reservation create vm1 --bytes 1G --json | jq -r .id)
                  remapctl export create vm1 --reservation "$id" --name vm1-backup

                Without --name remapd names it VOLUME+ID. Prints the export's NBD URI.
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The volume to export.", completion: Completion.volumes)
        var volume: String

        @Option(
            help: ArgumentHelp("A pooled reservation of the volume for writes through the export.", valueName: "id"),
            completion: Completion.reservations)
        var reservation: String?

        @Option(help: ArgumentHelp("The export's name.", valueName: "name"))
        var name: String?

        @OptionGroup var socket: NBDSocketOption

        func validate() throws {
            if volume.isEmpty { throw ValidationError("The volume name must not be empty.") }
            if reservation?.isEmpty == true { throw ValidationError("--reservation needs an ID.") }
            if name?.isEmpty == true { throw ValidationError("--name needs a name.") }
        }

        func run() throws {
            let client = try global.makeClient()
            let reply = try client.createExport(ExportSpec(volume: volume, reservation: reservation, name: name))
            let nbd = socket.locate(for: client)
            Output.answer(reply, json: global.json) { "export \($0.name) created\n" + $0.details(nbd: nbd) }
        }
    }

    /// `remapctl export list`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List every NBD export: each volume's own and the extra ones.")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var socket: NBDSocketOption

        func run() throws {
            let client = try global.makeClient()
            let nbd = socket.locate(for: client)
            Output.answer(try client.exports(), json: global.json) { Export.table($0.exports, nbd: nbd) }
            if !global.json, let caveat = nbd.caveat {
                Output.print(toStandardError: "note: \(caveat)\n")
            }
        }
    }

    /// `remapctl export delete NAME`
    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove an extra export.",
            discussion: """
                A volume's own export goes only with the volume. An export an NBD \
                client is connected to is refused (in-use).
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The export's name.", completion: Completion.exports)
        var name: String

        func validate() throws {
            if name.isEmpty { throw ValidationError("The export name must not be empty.") }
        }

        func run() throws {
            try global.makeClient().deleteExport(named: name)
            Output.deleted("export", name, json: global.json)
        }
    }
}
