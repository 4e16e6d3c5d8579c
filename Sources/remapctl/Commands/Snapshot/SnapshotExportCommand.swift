import ArgumentParser
import RemapWire

extension SnapshotCommand {
    /// `remapctl snapshot export SNAPSHOT FILE [--force] [--progress | --no-progress]`
    struct ExportFile: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "export",
            abstract: "Copy a snapshot into a local sparse raw image file.",
            discussion: """
                remapctl asks remapd which ranges of the snapshot hold data and \
                fetches only those (over the REST API, in pieces of 4 MiB); the rest \
                of the file, and blocks that are all zeros, stay holes, so the file \
                takes about as much disk as the snapshot has data. The file is \
                written as FILE.part and renamed to FILE once complete; an existing \
                FILE is replaced only with --force.

                A progress line goes to standard error when it is a terminal, or \
                with --progress; never with --no-progress or --json.

                  remapctl snapshot export vm1@nightly /backup/vm1.raw
                  qemu-img convert -f raw -O qcow2 /backup/vm1.raw /backup/vm1.qcow2
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var target: SnapshotArgument

        @Argument(help: ArgumentHelp("The image file to write.", valueName: "file"), completion: .file())
        var file: String

        @Flag(help: "Replace FILE if it exists.")
        var force = false

        @Flag(
            inversion: .prefixedNo, exclusivity: .exclusive,
            help: "Show a progress line on standard error (default: when it is a terminal).")
        var progress: Bool?

        func validate() throws {
            if file.isEmpty { throw ValidationError("The file name must not be empty.") }
        }

        func run() throws {
            let path = WorkingDirectory.absolute(file)
            switch SparseFile.isRegularFile(path) {
            case nil:
                break
            case false?:
                throw ClientError.localFile(path: path, reason: "exists and is not a regular file")
            case true?:
                if !force {
                    throw ClientError.localFile(path: path, reason: "already exists (use --force to replace it)")
                }
            }

            let client = try global.makeClient()
            let snapshot = try client.snapshot(target.snapshot).value
            let layout = try client.snapshotChanges(snapshot.id).value
            let download = try SnapshotDownload(client: client, snapshotID: snapshot.id, layout: layout)

            var output = try SparseFile(path: path, sizeBytes: layout.sizeBytes)
            var progress = TransferProgress.isWanted(requested: self.progress, json: global.json)
                ? TransferProgress(label: "export \(snapshot.address)", totalBytes: download.dataBytes)
                : nil
            let summary: SnapshotDownload.Summary
            do {
                summary = try download.run(into: output, progress: &progress)
            } catch .problem(var problem, let status, let reason) where status == 404 {
                // Each piece is a request of its own: between two of them the
                // snapshot can be deleted.
                progress?.abandon()
                problem.detail = "snapshot \(snapshot.address) was deleted during the export: "
                    + (problem.detail.nonEmpty ?? problem.title.nonEmpty ?? reason)
                throw ClientError.problem(problem, httpStatus: status, reason: reason)
            } catch {
                progress?.abandon()
                throw error
            }
            progress?.finish(doneBytes: summary.fetchedBytes)
            try output.publish(replacing: force)

            if global.json {
                let document = JSONValue.object([
                    "snapshot": .string(snapshot.id),
                    "name": .string(snapshot.address),
                    "file": .string(path),
                    "sizeBytes": .integer(Int64(layout.sizeBytes)),
                    "ranges": .integer(Int64(layout.ranges.count)),
                    "fetchedBytes": .integer(Int64(summary.fetchedBytes)),
                    "writtenBytes": .integer(Int64(summary.writtenBytes)),
                ])
                Output.print(document.prettyPrinted + "\n")
                return
            }
            var fields = FieldList()
            fields.append("file", path)
            fields.append("size", Output.size(layout.sizeBytes))
            let ranges = layout.ranges.count
            fields.append("fetched", Output.size(summary.fetchedBytes) + " in \(ranges) range\(ranges == 1 ? "" : "s")")
            fields.append("written", Output.size(summary.writtenBytes) + "; the rest is holes")
            Output.print("snapshot \(snapshot.address) exported\n" + fields.rendered())
        }
    }
}
