import ArgumentParser
import RemapWire

/// `remapctl operation …`: work remapd does in the background.
struct OperationCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operation",
        abstract: "List, show and cancel remapd's background operations, such as volume imports.",
        subcommands: [List.self, Show.self, Cancel.self])
}

extension OperationCommand {
    /// `remapctl operation list`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the operations remapd remembers, newest first.")

        @OptionGroup var global: GlobalOptions

        func run() throws {
            Output.answer(try global.makeClient().operations(), json: global.json) { Operation.table($0.operations) }
        }
    }

    /// `remapctl operation show ID`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show one operation: its state, progress, and why it failed.")

        @OptionGroup var global: GlobalOptions

        @OptionGroup var target: OperationArgument

        func run() throws {
            Output.show(try global.makeClient().operation(target.id), json: global.json)
        }
    }
}

extension OperationCommand {
    /// `remapctl operation cancel ID`
    struct Cancel: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel a running import (its volume is deleted), or forget a finished operation.")

        @OptionGroup var global: GlobalOptions

        @OptionGroup var target: OperationArgument

        func run() throws {
            guard let reply = try global.makeClient().cancelOperation(target.id) else {
                if !global.json { Output.print("operation \(target.id) forgotten") }
                return
            }
            Output.show(reply, json: global.json)
        }
    }
}
