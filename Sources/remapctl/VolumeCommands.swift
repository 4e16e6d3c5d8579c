import ArgumentParser

/// `remapctl volume …`: create, inspect and delete volumes.
struct VolumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume",
        abstract: "Create, inspect and delete volumes.",
        subcommands: [Create.self, List.self, Show.self, Delete.self])
}

extension VolumeCommand {
    /// `remapctl volume create NAME --size SIZE [--pool POOL]`
    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a volume.",
            discussion: """
                Creating a volume that already exists with the same size and pool \
                succeeds and reports the existing volume.
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The new volume's name.")
        var name: String

        @Option(
            help: ArgumentHelp(
                "The volume's size: bytes, or a number with K, M, G, T or P (binary: 1K = 1024).",
                valueName: "size"),
            transform: { text in try ByteSize(parsing: text) })
        var size: ByteSize

        @Option(help: ArgumentHelp("The pool to draw from (default: the server's default pool).", valueName: "pool"))
        var pool: String?

        func validate() throws {
            if name.isEmpty { throw ValidationError("The volume name must not be empty.") }
            if pool?.isEmpty == true { throw ValidationError("--pool needs a name.") }
        }

        func run() throws {
            let spec = VolumeSpec(name: name, sizeBytes: size.bytes, pool: pool)
            let reply = try global.makeClient().createVolume(spec)
            if global.json {
                Output.printJSON(reply.body)
                return
            }
            let outcome = reply.status == 201 ? "created" : "exists"
            Output.print("volume \(reply.value.name) \(outcome)\n" + reply.value.details)
        }
    }

    /// `remapctl volume list`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List volumes.")

        @OptionGroup var global: GlobalOptions

        func run() throws {
            let reply = try global.makeClient().volumes()
            if global.json {
                Output.printJSON(reply.body)
                return
            }
            var table = Table([
                .init(title: "NAME"),
                .init(title: "POOL"),
                .init(title: "SIZE", alignment: .right),
                .init(title: "ALLOCATED", alignment: .right),
                .init(title: "CREATED"),
                .init(title: "EXPORT"),
            ])
            for volume in reply.value.volumes.sorted(by: { $0.name < $1.name }) {
                table.append([
                    volume.name,
                    volume.pool,
                    ByteSize.format(volume.sizeBytes),
                    ByteSize.format(volume.allocatedBytes),
                    volume.createdAt,
                    volume.exportName,
                ])
            }
            Output.print(table.rendered())
        }
    }

    /// `remapctl volume show NAME`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one volume.")

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The volume's name.")
        var name: String

        func validate() throws {
            if name.isEmpty { throw ValidationError("The volume name must not be empty.") }
        }

        func run() throws {
            let reply = try global.makeClient().volume(named: name)
            if global.json {
                Output.printJSON(reply.body)
                return
            }
            Output.print(reply.value.details)
        }
    }

    /// `remapctl volume delete NAME`
    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a volume and release its space.")

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The volume's name.")
        var name: String

        func validate() throws {
            if name.isEmpty { throw ValidationError("The volume name must not be empty.") }
        }

        func run() throws {
            try global.makeClient().deleteVolume(named: name)
            if global.json {
                // The daemon answers 204 without a body; scripts still get a document.
                Output.print(JSONValue.object(["deleted": .string(name)]).prettyPrinted + "\n")
                return
            }
            Output.print("volume \(name) deleted\n")
        }
    }
}

extension Volume {
    /// The volume as `remapctl volume show` prints it.
    var details: String {
        var fields = FieldList()
        fields.append("name", name)
        fields.append("id", id)
        fields.append("pool", pool)
        fields.append("size", Output.size(sizeBytes))
        fields.append("allocated", Output.size(allocatedBytes))
        fields.append("created", createdAt)
        fields.append("export", exportName)
        return fields.rendered()
    }
}
