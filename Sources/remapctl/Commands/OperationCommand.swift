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
    /// The ID argument of `show` and `cancel`.
    struct OperationArgument: ParsableArguments {
        @Argument(help: "The operation's ID.", completion: Completion.operations)
        var id: String

        func validate() throws {
            if id.isEmpty { throw ValidationError("The operation ID must not be empty.") }
        }
    }

    /// `remapctl operation list`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the operations remapd remembers, newest first.")

        @OptionGroup var global: GlobalOptions

        func run() throws {
            let reply = try global.makeClient().operations()
            if global.json {
                Output.printJSON(reply.body)
                return
            }
            Output.print(Operation.table(reply.value.operations))
        }
    }

    /// `remapctl operation show ID`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show one operation: its state, progress, and why it failed.")

        @OptionGroup var global: GlobalOptions

        @OptionGroup var target: OperationArgument
        var id: String { target.id }

        func run() throws {
            let reply = try global.makeClient().operation(id)
            Output.show(reply, json: global.json)
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
        var id: String { target.id }

        func run() throws {
            guard let reply = try global.makeClient().cancelOperation(id) else {
                if !global.json { Output.print("operation \(id) forgotten") }
                return
            }
            Output.show(reply, json: global.json)
        }
    }
}
