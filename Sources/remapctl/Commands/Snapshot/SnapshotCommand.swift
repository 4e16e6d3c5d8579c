import ArgumentParser
import RemapWire

/// `remapctl snapshot …`: read-only point-in-time images of volumes.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Take, list, clone, compare, export and delete read-only snapshots of volumes.",
        discussion: """
            A snapshot is named per volume and addressed as VOLUME@NAME or by its \
            ID. Taking one copies nothing: the snapshot and the volume share \
            their chunks until the volume overwrites them (copy on write, per \
            chunk). NBD clients read a snapshot as the read-only export \
            VOLUME@NAME. A clone is a new writable volume that starts as a copy \
            of a snapshot; remapctl volume revert makes a volume read what one of \
            its snapshots reads.
            """,
        subcommands: [Create.self, List.self, Show.self, Clone.self, Changes.self, ExportFile.self, Delete.self])
}

extension SnapshotCommand {
    /// `remapctl snapshot create VOLUME NAME`
    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take a snapshot of a volume.",
            discussion: """
                Taking a snapshot the volume already has under that name succeeds \
                and reports the existing one. It costs no space, except for a \
                volume with range reservations: its snapshot holds copy-on-write \
                space for the reserved chunks already written, so that overwriting \
                them still cannot fail, and is refused with insufficient-space when \
                the pool cannot hold it.
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The volume to snapshot.", completion: Completion.volumes)
        var volume: String

        @Argument(help: "The snapshot's name, unique among the volume's snapshots.")
        var name: String

        func validate() throws {
            if volume.isEmpty { throw ValidationError("The volume name must not be empty.") }
            if name.isEmpty { throw ValidationError("The snapshot name must not be empty.") }
        }

        func run() throws {
            let reply = try global.makeClient().createSnapshot(named: name, ofVolume: volume)
            Output.changed(reply, json: global.json) { "snapshot \($0.address) \(reply.outcome)" }
        }
    }

    /// `remapctl snapshot list [VOLUME]`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the snapshots of one volume, or of every volume.",
            discussion: """
                UNIQUE is what deleting the snapshot would give back (chunks only \
                it maps), SHARED what it maps that others map too; RESERVED is the \
                copy-on-write space it holds for the volume's range reservations. \
                A volume's snapshots are listed oldest first.
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "Only this volume's snapshots.", completion: Completion.volumes)
        var volume: String?

        func validate() throws {
            if volume?.isEmpty == true { throw ValidationError("The volume name must not be empty.") }
        }

        func run() throws {
            let reply = try global.makeClient().snapshots(ofVolume: volume)
            Output.answer(reply, json: global.json) { Snapshot.table(Self.groupedByVolume($0.snapshots)) }
        }

        /// Grouped by volume, each volume's in remapd's order (oldest first).
        static func groupedByVolume(_ snapshots: [Snapshot]) -> [Snapshot] {
            snapshots.enumerated()
                .sorted { ($0.element.volume, $0.offset) < ($1.element.volume, $1.offset) }
                .map(\.element)
        }
    }

    /// `remapctl snapshot show SNAPSHOT`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one snapshot and the space it holds.")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var target: SnapshotArgument

        func run() throws {
            Output.show(try global.makeClient().snapshot(target.snapshot), json: global.json)
        }
    }

    /// `remapctl snapshot delete SNAPSHOT`
    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a snapshot and release the space only it holds.",
            discussion: """
                A snapshot an NBD client is reading, or whose content is being \
                exported, is refused (in-use). Clones made from it are not affected.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var target: SnapshotArgument

        func run() throws {
            try global.makeClient().deleteSnapshot(target.snapshot)
            Output.deleted("snapshot", target.snapshot, json: global.json)
        }
    }

    /// `remapctl snapshot clone SNAPSHOT NEWVOLUME [--label KEY=VALUE …]`
    struct Clone: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a writable volume that starts as a copy of a snapshot.",
            discussion: """
                The clone shares the snapshot's chunks until it overwrites them, so \
                it costs no space at first; it is in the snapshot's pool. Cloning \
                again to a volume that already is a clone of that snapshot succeeds \
                and reports it.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var target: SnapshotArgument

        @Argument(help: "The new volume's name.")
        var newVolume: String

        @Option(
            name: .customLong("label"),
            help: ArgumentHelp("A label to attach to the new volume, key=value. Repeatable.", valueName: "key=value"),
            transform: { text in try LabelAssignment(parsing: text) })
        var labels: [LabelAssignment] = []

        func validate() throws {
            if newVolume.isEmpty { throw ValidationError("The new volume's name must not be empty.") }
            _ = try VolumeCommand.labelSet(labels)
        }

        func run() throws {
            let labels = try VolumeCommand.labelSet(self.labels)
            let reply = try global.makeClient().cloneSnapshot(
                target.snapshot, CloneSpec(name: newVolume, labels: labels.isEmpty ? nil : labels))
            Output.changed(reply, json: global.json) { volume in
                "volume \(volume.name) " + (reply.status == 201 ? "created from \(target.snapshot)" : reply.outcome)
            }
        }
    }

    /// `remapctl snapshot changes SNAPSHOT [--base OTHER]`
    struct Changes: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the byte ranges where a snapshot differs from another, or where it holds data.",
            discussion: """
                With --base, the ranges whose content may differ between the base \
                and the snapshot (in whole chunks, from remapd's chunk maps: no data \
                is read, so a chunk rewritten with the same bytes counts), as an \
                incremental backup needs. The base must be in the same pool. \
                Without --base, the ranges that hold data; everything else reads \
                zeros.

                The table gives each range's offset and length in bytes; the last \
                line the total.

                  remapctl snapshot changes vm1@tue --base vm1@mon
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var target: SnapshotArgument

        @Option(
            help: ArgumentHelp(
                "Compare with this snapshot: VOLUME@NAME, its ID, or the name of one of the same volume's snapshots.",
                valueName: "snapshot"),
            completion: Completion.baseSnapshots)
        var base: String?

        func validate() throws {
            if base?.isEmpty == true { throw ValidationError("--base needs a snapshot.") }
        }

        func run() throws {
            let reply = try global.makeClient().snapshotChanges(target.snapshot, base: base)
            Output.answer(reply, json: global.json) { $0.rendered(base: base) }
        }
    }
}
