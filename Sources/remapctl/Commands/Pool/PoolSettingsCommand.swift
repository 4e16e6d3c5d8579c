import ArgumentParser
import RemapWire

extension PoolCommand {
    /// `remapctl pool set NAME [--on-no-space error|queue:SECONDS] [--thresholds 80,90,95]`
    struct Settings: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Change what a pool does when it runs out of space, and when it warns.",
            discussion: """
                --on-no-space error fails a write that finds no space at once with \
                ENOSPC (the default); queue:SECONDS (1 to 300; 30, 30s or 2m) holds \
                it until space comes back (a delete, TRIM, released reservation or \
                grown pool) or the time is up, then fails it.

                --thresholds lists percentages of the capacity committed (allocated \
                + reserved); crossing one upward raises a pool.low-space event \
                (remapctl events). none turns them off. Settings not given are kept.

                  remapctl pool set default --on-no-space queue:30 --thresholds 70,85,95
                """)

        @OptionGroup var global: GlobalOptions

        @OptionGroup var pool: PoolName

        @Option(
            help: ArgumentHelp(
                "error, or queue:SECONDS to hold writes that find no space.", valueName: "error|queue:seconds"),
            completion: .list(["error", "queue:"]),
            transform: { text in try OnNoSpace(parsing: text) })
        var onNoSpace: OnNoSpace?

        @Option(
            help: ArgumentHelp(
                "Percentages of capacity committed that raise pool.low-space events, e.g. 80,90,95; or none.",
                valueName: "list"),
            transform: { text in try Thresholds(parsing: text) })
        var thresholds: Thresholds?

        func validate() throws {
            if onNoSpace == nil && thresholds == nil {
                throw ValidationError("Give --on-no-space or --thresholds (or both).")
            }
        }

        func run() throws {
            let update = PoolUpdate(onNoSpace: onNoSpace, lowSpaceThresholds: thresholds?.percentages)
            let reply = try global.makeClient().updatePool(named: pool.name, update)
            Output.changed(reply, json: global.json) { "pool \($0.name) updated" }
        }
    }
}

/// `--thresholds` as typed: whole percentages separated by commas, or
/// `none`. Their range and order are remapd's to check.
struct Thresholds: Equatable, Sendable {
    var percentages: [Int]

    /// Why a `--thresholds` value was refused.
    struct ParseError: Error, CustomStringConvertible {
        let description: String
    }

    init(parsing text: String) throws(ParseError) {
        let trimmed = text.trimmed
        if trimmed.lowercased() == "none" {
            percentages = []
            return
        }
        var values: [Int] = []
        for part in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
            let item = part.trimmed
            guard let value = Int(item.hasSuffix("%") ? String(item.dropLast()) : item) else {
                throw ParseError(description: "'\(item)' is not a whole percentage; use e.g. 80,90,95 or none")
            }
            values.append(value)
        }
        percentages = values
    }
}
