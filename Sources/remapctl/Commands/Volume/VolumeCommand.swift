import ArgumentParser
import RemapWire

/// `remapctl volume …`: create, inspect, change and delete volumes.
struct VolumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume",
        abstract: "Create, import, inspect, resize, label, revert and delete volumes.",
        subcommands: [
            Create.self, Import.self, List.self, Show.self, Resize.self, Label.self, Revert.self, Delete.self,
        ])
}

extension VolumeCommand {
    /// The help for every `--size` of a volume.
    static let sizeHelp = ArgumentHelp(
        "The volume's size: bytes, or a number with K, M, G, T or P (binary: 1K = 1024); a multiple of 512.",
        valueName: "size")

    /// The labels `assignments` set, with a key given twice reported as a
    /// command-line error (exit status 2) rather than a failure.
    static func labelSet(_ assignments: [LabelAssignment]) throws(ValidationError) -> Labels {
        do {
            return try Labels(assignments: assignments)
        } catch {
            throw ValidationError(error.description)
        }
    }
}

extension VolumeCommand {
    /// `remapctl volume create NAME --size SIZE [--pool POOL] [--label KEY=VALUE …]`
    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a volume.",
            discussion: """
                Creating a volume that already exists with the same size, pool and \
                labels succeeds and reports the existing volume.

                --reservation thick backs every chunk of the volume now (a range \
                reservation named thick, kept over the whole volume when it grows); \
                --reservation SIZE sets SIZE aside in the pool (a pooled reservation \
                named default that every write to the volume draws on). Either is \
                refused with insufficient-space when the pool cannot hold it.
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The new volume's name.")
        var name: String

        @Option(help: VolumeCommand.sizeHelp, transform: { text in try ByteSize(parsing: text) })
        var size: ByteSize

        @Option(
            help: ArgumentHelp("The pool to draw from (default: the server's default pool).", valueName: "pool"),
            completion: Completion.pools)
        var pool: String?

        @Option(
            name: .customLong("label"),
            help: ArgumentHelp("A label to attach, key=value. Repeatable.", valueName: "key=value"),
            transform: { text in try LabelAssignment(parsing: text) })
        var labels: [LabelAssignment] = []

        @Option(
            help: ArgumentHelp(
                "The space promised to the volume: none (thin, the default), thick (all of it, "
                    + "backed now), or a size set aside in the pool for its writes (e.g. 256M).",
                valueName: "none|thick|size"),
            completion: .list(["none", "thick"]),
            transform: { text in try VolumeReservation(parsing: text) })
        var reservation: VolumeReservation?

        func validate() throws {
            if name.isEmpty { throw ValidationError("The volume name must not be empty.") }
            if pool?.isEmpty == true { throw ValidationError("--pool needs a name.") }
            _ = try VolumeCommand.labelSet(labels)
        }

        func run() throws {
            let labels = try VolumeCommand.labelSet(self.labels)
            let spec = VolumeSpec(
                name: name, sizeBytes: size.bytes, pool: pool, labels: labels.isEmpty ? nil : labels,
                reservation: reservation)
            let reply = try global.makeClient().createVolume(spec)
            Output.changed(reply, json: global.json) { "volume \($0.name) \(reply.outcome)" }
        }
    }

    /// `remapctl volume show NAME`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one volume.")

        @OptionGroup var global: GlobalOptions

        @OptionGroup var volume: VolumeName

        func run() throws {
            Output.show(try global.makeClient().volume(named: volume.name), json: global.json)
        }
    }

    /// `remapctl volume delete NAME`
    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a volume and release its space.",
            discussion: "A volume an NBD client is connected to is refused (in-use).")

        @OptionGroup var global: GlobalOptions

        @OptionGroup var volume: VolumeName

        func run() throws {
            try global.makeClient().deleteVolume(named: volume.name)
            Output.deleted("volume", volume.name, json: global.json)
        }
    }
}
