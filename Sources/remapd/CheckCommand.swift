import ArgumentParser
import Foundation
import Glibc
import RemapCore
import RemapStore

/// `remapd check`: verifies a stopped daemon's metadata, like `thin_check`.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check a state directory's metadata offline, without serving (remapd must be stopped).",
        usage: "remapd check --state-dir <state-dir> [--json]",
        discussion: """
            Opens STATE_DIR/metadata.db read-only (also after a kill -9, WAL and all) and \
            verifies it: pool segments and supplier files, every image's chunk map rebuilt \
            from its layers as remapd does at start (chunks inside the pool, no chunk mapped \
            by two trees or at two places), the layer trees, reservations, exports, dirty \
            chunks, and that mapped plus reserved chunks fit each pool. Prints each pool's \
            figures and one line per finding; errors are wrong, notes are what a crash may \
            leave and remapd repairs at start.

            Exit status: 0 no errors (notes allowed), 1 errors found, 2 nothing checked \
            (a remapd holds the state directory, or there is no readable metadata).
            """)

    /// remapd parses its own options before a subcommand's, wherever they
    /// stand on the command line: `--state-dir` lands there, and is read
    /// from there.
    @ParentCommand var daemon: Remapd

    @Option(help: "The state directory to check (remapd's --state-dir; required).")
    var stateDir: String?

    @Flag(help: "Print the report as JSON: the figures and findings of each pool, and the findings of none.")
    var json = false

    private var directory: String? { stateDir ?? daemon.stateDir }

    func validate() throws {
        guard directory != nil else { throw ValidationError("Missing expected argument '--state-dir <state-dir>'") }
    }

    /// Nothing could be checked: exit 2 with `message`.
    struct Refusal: Error { let message: String }

    func run() throws {
        do {
            let report = try check()
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                for line in report.lines { print(line) }
            }
            throw ExitCode(report.ok ? 0 : 1)
        } catch let refusal as Refusal {
            FileHandle.standardError.write(Data("remapd check: \(refusal.message)\n".utf8))
            throw ExitCode(2)
        }
    }

    private func check() throws -> MetadataReport {
        // invariant: checked in validate()
        let directory = self.directory!
        var status = stat()
        guard stat(directory, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
            throw Refusal(message: "\(directory) is not a directory")
        }
        let lock = try lockStateDirectory(directory)
        defer { if let lock { close(lock) } }
        let path = directory + "/metadata.db"
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
            throw Refusal(message: "\(directory) holds no metadata (\(path) does not exist)")
        }
        do {
            let store = try MetadataStore(readingOnly: path)
            let unreadable = try store.unreadableValues()
            guard unreadable.isEmpty else { return MetadataReport(pools: [], findings: unreadable) }
            var input = try store.checkInput()
            for supplier in input.pools.flatMap(\.suppliers) { input.suppliers[supplier.id] = probe(supplier) }
            return try MetadataCheck.run(input, mappings: store)
        } catch {
            throw Refusal(message: "cannot read \(path): \(error)")
        }
    }

    /// Shares the lock a running remapd holds exclusively, so none runs
    /// while the metadata is read. A directory without a lock file (a copy
    /// of a state directory) is checked as it is: nothing is created in it.
    private func lockStateDirectory(_ directory: String) throws(Refusal) -> Int32? {
        let lockPath = directory + "/remapd.lock"
        let fd = open(lockPath, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let error = errno
            if error == ENOENT { return nil }
            throw Refusal(message: "cannot open \(lockPath): \(String(cString: strerror(error)))")
        }
        guard flock(fd, LOCK_SH | LOCK_NB) == 0 else {
            let error = errno
            close(fd)
            if error == EWOULDBLOCK {
                throw Refusal(message: "a remapd is running on \(directory) (it holds \(lockPath)); stop it first")
            }
            throw Refusal(message: "cannot lock \(lockPath): \(String(cString: strerror(error)))")
        }
        return fd
    }

    /// Whether a supplier is there, readable, and how large it is.
    private func probe(_ supplier: Supplier) -> SupplierProbe {
        func failure(_ error: Int32) -> SupplierProbe {
            error == ENOENT || error == ENOTDIR ? .missing : .unreadable(String(cString: strerror(error)))
        }
        let fd = open(supplier.path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return failure(errno) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { return failure(errno) }
        // lseek to the end measures block devices as well as files.
        let size = lseek(fd, 0, SEEK_END)
        guard size >= 0 else { return failure(errno) }
        var byte: UInt8 = 0
        if size > 0, pread(fd, &byte, 1, 0) < 0 { return failure(errno) }
        return .present(sizeBytes: UInt64(size), identity: "\(status.st_dev):\(status.st_ino)")
    }
}
