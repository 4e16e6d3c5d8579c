import ArgumentParser

/// `remapctl pool …`: look at the storage pools volumes draw from.
struct PoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Inspect storage pools.",
        subcommands: [List.self, Show.self])
}

extension PoolCommand {
    /// `remapctl pool list`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List pools with their capacity and use.")

        @OptionGroup var global: GlobalOptions

        func run() throws {
            let reply = try global.makeClient().pools()
            if global.json {
                Output.printJSON(reply.body)
                return
            }
            var table = Table([
                .init(title: "NAME"),
                .init(title: "CHUNK", alignment: .right),
                .init(title: "CAPACITY", alignment: .right),
                .init(title: "ALLOCATED", alignment: .right),
                .init(title: "FREE", alignment: .right),
                .init(title: "USED%", alignment: .right),
            ])
            for pool in reply.value.pools.sorted(by: { $0.name < $1.name }) {
                table.append([
                    pool.name,
                    ByteSize.format(pool.chunkSizeBytes),
                    ByteSize.format(pool.capacityBytes),
                    ByteSize.format(pool.allocatedBytes),
                    ByteSize.format(pool.freeBytes),
                    ByteSize.percentage(pool.allocatedBytes, of: pool.capacityBytes),
                ])
            }
            Output.print(table.rendered())
        }
    }

    /// `remapctl pool show NAME`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show one pool and its suppliers.")

        @OptionGroup var global: GlobalOptions

        @Argument(help: "The pool's name.")
        var name: String

        func validate() throws {
            if name.isEmpty { throw ValidationError("The pool name must not be empty.") }
        }

        func run() throws {
            let reply = try global.makeClient().pool(named: name)
            if global.json {
                Output.printJSON(reply.body)
                return
            }
            Output.print(reply.value.details)
        }
    }
}

extension Pool {
    /// The pool as `remapctl pool show` prints it.
    var details: String {
        var fields = FieldList()
        fields.append("name", name)
        fields.append("chunk size", Output.size(chunkSizeBytes))
        fields.append("capacity", Output.size(capacityBytes))
        fields.append("allocated", Output.size(allocatedBytes))
        fields.append("free", Output.size(freeBytes))
        fields.append("used", ByteSize.percentage(allocatedBytes, of: capacityBytes))
        fields.append("suppliers", suppliers.isEmpty ? "none" : String(suppliers.count))
        var text = fields.rendered()
        if !suppliers.isEmpty {
            var table = Table([
                .init(title: "ID"),
                .init(title: "KIND"),
                .init(title: "SIZE", alignment: .right),
                .init(title: "PATH"),
            ])
            for supplier in suppliers {
                table.append([supplier.id, supplier.kind, ByteSize.format(supplier.sizeBytes), supplier.path])
            }
            text += table.rendered(indent: "  ")
        }
        return text
    }
}
