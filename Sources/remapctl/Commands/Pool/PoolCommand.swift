import ArgumentParser
import RemapWire

/// `remapctl pool …`: the storage pools volumes draw from.
struct PoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Create, inspect, grow and delete storage pools.",
        subcommands: [List.self, Show.self, Create.self, AddSupplier.self, Grow.self, Settings.self, ClearErrors.self,
                      Delete.self])
}

extension PoolCommand {
    /// `remapctl pool list`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List pools with their capacity, use and overcommit.",
            discussion: """
                CAPACITY = ALLOCATED + RESERVED + FREE, where RESERVED is the unused \
                part of live reservations. USED% is ALLOCATED / CAPACITY; \
                COMMITTED% is (ALLOCATED + RESERVED) / CAPACITY, which the \
                THRESHOLDS (percentages raising pool.low-space events) watch. \
                PROVISIONED is the sum of the pool's volume sizes; OVERCOMMIT is \
                PROVISIONED / CAPACITY (above 1.00x the volumes could ask for more \
                than the pool holds). ON-NO-SPACE is what a write that finds no \
                space does: error (ENOSPC at once) or queue:SECONDS (wait for space). \
                STATE is online, degraded (a supplier failed: reads work, writes and \
                flushes fail with EIO until `remapctl pool clear-errors`) or offline \
                (a supplier was missing at start).
                """)

        @OptionGroup var global: GlobalOptions

        func run() throws {
            Output.answer(try global.makeClient().pools(), json: global.json) { Pool.table($0.pools) }
        }
    }

    /// `remapctl pool show NAME`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show one pool and its suppliers.")

        @OptionGroup var global: GlobalOptions

        @OptionGroup var pool: PoolName

        func run() throws {
            Output.show(try global.makeClient().pool(named: pool.name), json: global.json)
        }
    }

    /// `remapctl pool clear-errors NAME`
    struct ClearErrors: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "clear-errors",
            abstract: "Bring a degraded or offline pool back online once its device is fixed.",
            discussion: """
                remapd checks every supplier of the pool again: it must still be the \
                file remapd has open (not deleted or replaced), not shorter than \
                recorded, and fdatasync on it must succeed; an offline pool's \
                suppliers are opened. If all pass the pool is online again. Data the \
                failed device lost since the last successful FLUSH stays lost: check \
                the filesystems on the pool's volumes. A supplier that still fails \
                is refused (supplier-failed) and the pool keeps its state.
                """)

        @OptionGroup var global: GlobalOptions

        @OptionGroup var pool: PoolName

        func run() throws {
            let reply = try global.makeClient().clearPoolErrors(named: pool.name)
            Output.answer(reply, json: global.json) { "pool \(pool.name) is \($0.state ?? "online")\n" }
        }
    }

    /// `remapctl pool delete NAME`
    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a pool that has no volumes.",
            discussion: """
                The file suppliers remapd created for the pool are removed; block \
                devices are left as they are. A pool that still has volumes is \
                refused (in-use).
                """)

        @OptionGroup var global: GlobalOptions

        @OptionGroup var pool: PoolName

        func run() throws {
            try global.makeClient().deletePool(named: pool.name)
            Output.deleted("pool", pool.name, json: global.json)
        }
    }
}
