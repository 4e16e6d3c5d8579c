import ArgumentParser
import RemapWire

extension VolumeCommand {
    /// `remapctl volume revert VOLUME SNAPSHOT`
    struct Revert: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a volume read exactly what one of its snapshots reads.",
            discussion: """
                Everything written to the volume since the snapshot is discarded; \
                the snapshot stays. Refused (in-use) while an NBD client is \
                connected to the volume.
                """)

        @OptionGroup var global: GlobalOptions

        @OptionGroup var target: VolumeArgument

        @Argument(
            help: ArgumentHelp("One of the volume's snapshots: its name, VOLUME@NAME or its ID.", valueName: "snapshot"),
            completion: Completion.snapshotsOfVolume)
        var snapshot: String

        func validate() throws {
            if snapshot.isEmpty { throw ValidationError("The snapshot must not be empty.") }
        }

        func run() throws {
            let reply = try global.makeClient().revertVolume(named: target.volume, to: snapshot)
            Output.changed(reply, json: global.json) { "volume \($0.name) reverted to \(snapshot)" }
        }
    }
}
