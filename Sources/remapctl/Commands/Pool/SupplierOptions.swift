import ArgumentParser
import RemapWire

/// The command-line options that describe suppliers, shared by
/// `pool create` and `pool add-supplier`.
///
/// A file supplier needs a path and a size. ArgumentParser keeps the order of
/// a repeated option but not how different options interleave, so the two
/// travel as separate options paired by order: the first `--size` belongs to
/// the first `--file`, the second to the second, and so on. Their counts must
/// match. `--file PATH:SIZE` was the other candidate, but a colon is a valid
/// file-name character and completion cannot help after it.
struct SupplierOptions: ParsableArguments {
    @Option(
        name: .customLong("file"),
        help: ArgumentHelp(
            "A file supplier: remapd creates this file (absolute path on the daemon's host, "
                + "under its --supplier-dir). Repeatable; each needs its own --size.",
            valueName: "path"),
        completion: .file())
    var files: [String] = []

    @Option(
        name: .customLong("size"),
        help: ArgumentHelp(
            "The size of a file supplier, paired by order with --file: the first --size "
                + "goes with the first --file, and so on. Bytes, or K, M, G, T, P (1K = 1024).",
            valueName: "size"),
        transform: { text in try ByteSize(parsing: text) })
    var sizes: [ByteSize] = []

    @Flag(help: "Do not allocate the files' blocks on the host up front (thin; the pool can then hit a full host disk).")
    var noPreallocate = false

    @Option(
        name: .customLong("block"),
        help: ArgumentHelp(
            "A block-device supplier, used whole; it must not be mounted or open elsewhere. Repeatable.",
            valueName: "device"),
        completion: .file())
    var blocks: [String] = []

    func validate() throws {
        if files.count != sizes.count {
            throw ValidationError(
                "Give one --size for each --file (got \(files.count) --file and \(sizes.count) --size); "
                    + "they pair by order.")
        }
        if noPreallocate && files.isEmpty {
            throw ValidationError("--no-preallocate applies to --file suppliers only.")
        }
        if files.contains(where: \.isEmpty) || blocks.contains(where: \.isEmpty) {
            throw ValidationError("--file and --block need a path.")
        }
    }

    /// The suppliers in the order given: files first, then block devices.
    var specs: [SupplierSpec] {
        zip(files, sizes).map { .file(path: $0, sizeBytes: $1.bytes, preallocate: !noPreallocate) }
            + blocks.map { .block(path: $0) }
    }
}
