import ArgumentParser
import RemapWire

extension VolumeCommand {
    /// `remapctl volume import FILE --name NAME [--pool POOL] [--size SIZE] [--label KEY=VALUE …] [--no-wait]`
    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a volume from a raw image file on remapd's host.",
            discussion: """
                remapd reads FILE itself, so it must be a regular file on the \
                daemon's host, under its supplier directory (remapd --supplier-dir; \
                by default STATE_DIR/pools). remapctl sends FILE's absolute path. \
                Holes and all-zero blocks of the file take no space in the pool. \
                The size defaults to the file's, rounded up to 512 bytes.

                The volume exists at once, but cannot be exported, changed or \
                deleted until the import ends; if the import fails, remapd deletes \
                it. remapctl follows the import until it ends, showing progress on \
                standard error when it is a terminal or with --progress, and exits \
                1 with remapd's reason if it fails. Interrupting remapctl does not \
                stop the import; remapctl operation cancel ID does. With --no-wait \
                remapctl prints the operation and returns; follow it with remapctl \
                operation show ID.

                With --json remapctl prints the volume once imported, or with \
                --no-wait remapd's answer: the operation and the volume.

                  remapctl volume import /var/lib/remap/pools/vm1.raw --name vm1
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: ArgumentHelp("The raw image to import.", valueName: "file"), completion: .file())
        var file: String

        @Option(help: ArgumentHelp("The new volume's name.", valueName: "name"))
        var name: String

        @Option(
            help: ArgumentHelp("The pool to draw from (default: the server's default pool).", valueName: "pool"),
            completion: Completion.pools)
        var pool: String?

        @Option(
            help: ArgumentHelp(
                "The volume's size, if not the file's: bytes, or a number with K, M, G, T or P; a multiple of 512.",
                valueName: "size"),
            transform: { text in try ByteSize(parsing: text) })
        var size: ByteSize?

        @Option(
            name: .customLong("label"),
            help: ArgumentHelp("A label to attach, key=value. Repeatable.", valueName: "key=value"),
            transform: { text in try LabelAssignment(parsing: text) })
        var labels: [LabelAssignment] = []

        @Flag(
            inversion: .prefixedNo, exclusivity: .exclusive,
            help: "Show a progress line on standard error (default: when it is a terminal).")
        var progress: Bool?

        @Flag(help: "Print the started import and return without waiting for it.")
        var noWait = false

        /// How often remapctl asks how the import is going.
        static let pollMilliseconds = 200

        func validate() throws {
            if file.isEmpty { throw ValidationError("The file name must not be empty.") }
            if name.isEmpty { throw ValidationError("--name needs a name.") }
            if pool?.isEmpty == true { throw ValidationError("--pool needs a name.") }
            _ = try VolumeCommand.labelSet(labels)
        }

        func run() throws {
            let path = WorkingDirectory.absolute(file)
            let labels = try VolumeCommand.labelSet(self.labels)
            let spec = VolumeImportSpec(
                name: name, source: .init(file: path), pool: pool, sizeBytes: size?.bytes,
                labels: labels.isEmpty ? nil : labels)
            let client = try global.makeClient()
            let started = try client.importVolume(spec)
            let operation = started.value.operation

            if noWait {
                Output.answer(started, json: global.json) { started in
                    "import of \(path) into volume \(started.volume.name) started\n" + started.operation.details
                        + "follow it with: remapctl operation show \(started.operation.id)\n"
                }
                return
            }

            var progress = TransferProgress.isWanted(requested: self.progress, json: global.json)
                ? TransferProgress(label: "import \(name)", totalBytes: operation.totalBytes ?? 0)
                : nil
            let finished: Operation
            do {
                finished = try client.waitForOperation(operation, pollMilliseconds: Self.pollMilliseconds) { current in
                    progress?.totalBytes = current.totalBytes ?? 0
                    progress?.update(doneBytes: current.doneBytes ?? 0)
                }
            } catch {
                progress?.abandon()
                throw error
            }
            if finished.hasFailed {
                progress?.abandon()
                throw ClientError.failedOperation(finished, what: "import of \(path) into volume \(name)")
            }
            progress?.finish(doneBytes: finished.doneBytes ?? finished.totalBytes ?? 0)

            let volume = try client.volume(named: finished.volume ?? name)
            Output.changed(volume, json: global.json) { "volume \($0.name) imported from \(path)" }
        }
    }
}
