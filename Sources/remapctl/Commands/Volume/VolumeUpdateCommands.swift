import ArgumentParser
import RemapWire

extension VolumeCommand {
    /// `remapctl volume resize NAME --size SIZE [--allow-shrink]`
    struct Resize: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a volume's size.",
            discussion: """
                Growing is always allowed. Shrinking needs --allow-shrink: the data \
                past the new end is discarded and its chunks return to the pool, \
                and no NBD client may be connected.
                """)

        @OptionGroup var global: GlobalOptions

        @OptionGroup var volume: VolumeName

        @Option(help: VolumeCommand.sizeHelp, transform: { text in try ByteSize(parsing: text) })
        var size: ByteSize

        @Flag(help: "Allow a smaller size, discarding the data past it.")
        var allowShrink = false

        func run() throws {
            let reply = try global.makeClient().updateVolume(
                named: volume.name, VolumeUpdate(sizeBytes: size.bytes), allowShrink: allowShrink)
            Output.changed(reply, json: global.json) { "volume \($0.name) resized" }
        }
    }

    /// `remapctl volume label NAME [KEY=VALUE …] [--remove KEY …]`
    struct Label: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set or remove a volume's labels.",
            discussion: """
                Sets each KEY=VALUE (replacing an existing value) and removes each \
                --remove KEY (a key that is not there is ignored); other labels are \
                kept. remapctl reads the current labels and sends the whole new \
                set, so two label commands racing on one volume can lose an update.

                  remapctl volume label vm1 app=db tier=gold --remove scratch
                """)

        @OptionGroup var global: GlobalOptions

        @OptionGroup var volume: VolumeName

        @Argument(
            help: ArgumentHelp("Labels to set.", valueName: "key=value"),
            transform: { text in try LabelAssignment(parsing: text) })
        var assignments: [LabelAssignment] = []

        @Option(
            name: .customLong("remove"),
            help: ArgumentHelp("A label key to remove. Repeatable.", valueName: "key"))
        var removals: [String] = []

        func validate() throws {
            if assignments.isEmpty && removals.isEmpty {
                throw ValidationError("Give at least one KEY=VALUE to set or --remove KEY.")
            }
            _ = try VolumeCommand.labelSet(assignments)
            if let key = removals.first(where: { key in assignments.contains { $0.key == key } }) {
                throw ValidationError("The label '\(key)' is both set and removed.")
            }
            if removals.contains(where: \.isEmpty) { throw ValidationError("--remove needs a key.") }
        }

        func run() throws {
            let client = try global.makeClient()
            let current = try client.volume(named: volume.name).value
            let labels = Labels(current.labels).applying(assignments, removing: removals)
            let reply = try client.updateVolume(named: volume.name, VolumeUpdate(labels: labels))
            Output.changed(reply, json: global.json) { "volume \($0.name) labelled" }
        }
    }
}
