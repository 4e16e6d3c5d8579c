import ArgumentParser
import RemapWire

extension PoolCommand {
    /// `remapctl pool create NAME --file PATH --size SIZE … [--block DEV …]`
    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a pool from files and block devices.",
            discussion: """
                Each --file needs a --size; they pair by order (the first --size \
                goes with the first --file, the second with the second, ...), so \
                writing each pair together reads best:

                  remapctl pool create fast --file /var/lib/remap/pools/fast-1.img --size 4G \\
                      --file /var/lib/remap/pools/fast-2.img --size 8G
                  remapctl pool create big --block /dev/sdb --block /dev/sdc --chunk-size 1M

                remapd creates the files (they must not exist yet); paths are \
                absolute paths on the daemon's host, under its --supplier-dir \
                (default STATE_DIR/pools). --no-preallocate applies to every file \
                of the command. The suppliers are sent files first, then block \
                devices, each in the order given. Creating a pool that already \
                exists with the same spec succeeds and reports the existing pool.
                """)

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The new pool's name.")
        var name: String

        @OptionGroup(title: "Suppliers")
        var suppliers: SupplierOptions

        @Option(
            help: ArgumentHelp(
                "The pool's chunk size, a power of two from 4K to 4M (default: 64K).",
                valueName: "size"),
            transform: { text in try ByteSize(parsing: text) })
        var chunkSize: ByteSize?

        func validate() throws {
            if name.isEmpty { throw ValidationError("The pool name must not be empty.") }
            if suppliers.specs.isEmpty {
                throw ValidationError("A pool needs at least one supplier: --file PATH --size SIZE, or --block DEVICE.")
            }
        }

        func run() throws {
            let spec = PoolSpec(name: name, chunkSizeBytes: chunkSize?.bytes, suppliers: suppliers.specs)
            let reply = try global.makeClient().createPool(spec)
            Output.changed(reply, json: global.json) { "pool \($0.name) \(reply.outcome)" }
        }
    }

    /// `remapctl pool add-supplier NAME (--file PATH --size SIZE | --block DEV)`
    struct AddSupplier: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-supplier",
            abstract: "Grow a pool by one file or block device.",
            discussion: """
                Give either --file PATH --size SIZE [--no-preallocate] or --block \
                DEVICE. The new capacity is usable at once.
                """)

        @OptionGroup var global: GlobalOptions

        @OptionGroup var pool: PoolName

        @OptionGroup(title: "Supplier")
        var supplier: SupplierOptions

        func validate() throws {
            if supplier.specs.count != 1 {
                throw ValidationError("Give exactly one supplier: --file PATH --size SIZE, or --block DEVICE.")
            }
        }

        func run() throws {
            // validate() made sure there is exactly one.
            guard let spec = supplier.specs.first else { return }
            let reply = try global.makeClient().addSupplier(spec, toPool: pool.name)
            Output.changed(reply, json: global.json) { "pool \($0.name) grown" }
        }
    }
}
