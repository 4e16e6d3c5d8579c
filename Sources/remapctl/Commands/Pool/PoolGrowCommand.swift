import ArgumentParser
import RemapWire

extension PoolCommand {
    /// `remapctl pool grow NAME (--supplier ID|PATH | --add-file PATH) --size SIZE`
    struct Grow: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Grow a pool: enlarge a file supplier, or add a new file.",
            discussion: """
                  remapctl pool grow default --supplier /var/lib/remap/pools/default.img --size 8G
                  remapctl pool grow default --supplier 3f2a9c... --size +2G
                  remapctl pool grow default --add-file /var/lib/remap/pools/default-2.img --size 4G

                --supplier takes a supplier's ID, its path, or its file name, as \
                remapctl pool show lists them (a path or file name must match only \
                one). --size is the supplier's new size (larger only), or +SIZE to \
                add that much. With --add-file, --size is the new file's size. The \
                new space is usable at once, and writes waiting for space (pool set \
                --on-no-space queue:SECONDS) go ahead.
                """)

        @OptionGroup var global: GlobalOptions

        @OptionGroup var pool: PoolName

        @Option(
            help: ArgumentHelp("The file supplier to enlarge: its ID, path or file name.", valueName: "id|path"),
            completion: Completion.suppliers)
        var supplier: String?

        @Option(
            help: ArgumentHelp(
                "Add a new file supplier instead (absolute path on the daemon's host, under its --supplier-dir).",
                valueName: "path"),
            completion: .file())
        var addFile: String?

        @Option(
            help: ArgumentHelp(
                "The supplier's new size, or +SIZE to add to it; with --add-file the file's size. "
                    + "Bytes, or K, M, G, T, P (1K = 1024).",
                valueName: "size"),
            transform: { text in try SupplierGrowth(parsing: text) })
        var size: SupplierGrowth

        @Flag(help: "With --add-file: do not allocate the file's blocks on the host up front.")
        var noPreallocate = false

        func validate() throws {
            switch (supplier, addFile) {
            case (nil, nil):
                throw ValidationError("Give --supplier ID|PATH to enlarge a supplier, or --add-file PATH to add one.")
            case (.some, .some):
                throw ValidationError("Give either --supplier or --add-file, not both.")
            case (.some(let supplier), nil):
                if supplier.isEmpty { throw ValidationError("--supplier needs an ID or a path.") }
                if noPreallocate { throw ValidationError("--no-preallocate applies to --add-file only.") }
            case (nil, .some(let path)):
                if path.isEmpty { throw ValidationError("--add-file needs a path.") }
                if case .increase = size {
                    throw ValidationError("--size +SIZE enlarges an existing supplier; a new file takes a plain size.")
                }
            }
        }

        func run() throws {
            let client = try global.makeClient()
            let reply: APIClient.Reply<Pool>
            if let addFile {
                let spec = SupplierSpec.file(path: addFile, sizeBytes: size.bytes(from: 0), preallocate: !noPreallocate)
                reply = try client.addSupplier(spec, toPool: pool.name)
            } else if let supplier {
                let found = try Self.find(supplier, in: client.pool(named: pool.name).value)
                reply = try client.resizeSupplier(found.id, ofPool: pool.name, to: size.bytes(from: found.sizeBytes))
            } else {
                // validate() made sure one of them is given.
                return
            }
            Output.changed(reply, json: global.json) { "pool \($0.name) grown" }
        }

        /// The supplier `given` names: by ID, else by path, else by file
        /// name, each only when exactly one supplier matches.
        static func find(_ given: String, in pool: Pool) throws(ClientError) -> Supplier {
            if let byID = pool.suppliers.first(where: { $0.id == given }) {
                return byID
            }
            let absolute = WorkingDirectory.absolute(given)
            let matchers: [(Supplier) -> Bool] = [
                { $0.path == given || $0.path == absolute },
                { !given.contains("/") && $0.path.split(separator: "/").last.map(String.init) == given },
            ]
            for matches in matchers {
                let found = pool.suppliers.filter(matches)
                if found.count == 1 { return found[0] }
                if found.count > 1 {
                    throw .lookupFailed(
                        "'\(given)' matches \(found.count) suppliers of pool \(pool.name) "
                            + "(\(found.map(\.id).joined(separator: ", "))); give the ID")
                }
            }
            let known = pool.suppliers.map { "\($0.id) \($0.path)" }.joined(separator: ", ")
            throw .lookupFailed(
                "pool \(pool.name) has no supplier with ID or path '\(given)' (it has: \(known.isEmpty ? "none" : known))")
        }
    }
}

/// `--size` of `pool grow`: a supplier's new size, or `+SIZE` to add to it.
enum SupplierGrowth: Equatable, Sendable {
    case absolute(Int)
    case increase(Int)

    init(parsing text: String) throws(ByteSize.ParseError) {
        let trimmed = text.trimmed
        if trimmed.hasPrefix("+") {
            self = .increase(try ByteSize(parsing: String(trimmed.dropFirst())).bytes)
        } else {
            self = .absolute(try ByteSize(parsing: trimmed).bytes)
        }
    }

    /// The size to ask for, given the supplier's current one.
    func bytes(from current: Int) -> Int {
        switch self {
        case .absolute(let bytes): bytes
        case .increase(let bytes): current.addingReportingOverflow(bytes).overflow ? Int.max : current + bytes
        }
    }
}
