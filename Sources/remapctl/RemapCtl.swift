import ArgumentParser

/// `remapctl`, the command-line client of the remap storage daemon.
///
/// Exit status: 0 on success, 1 when remapd cannot be reached or answers
/// with an error, 2 when the command line is wrong.
@main
struct RemapCtl: ParsableCommand {
    /// remapctl's own release.
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "remapctl",
        abstract: "Control the remap storage daemon.",
        discussion: """
            remapctl talks to remapd's REST API on its unix socket (see --socket) \
            or over TCP (--url). Use --json on any command to get the daemon's \
            JSON instead of tables. Global options may come before or after the \
            subcommand.

            Exit status: 0 on success; 1 when remapd cannot be reached or answers \
            with an error, printed as one line: remapctl: <detail> (<code>, HTTP \
            <status>); 2 when the command line is wrong.

            Shell completion: remapctl --generate-completion-script bash|zsh|fish.
            """,
        version: version,
        subcommands: [
            PoolCommand.self,
            VolumeCommand.self,
            SnapshotCommand.self,
            OperationCommand.self,
            ReservationCommand.self,
            ExportCommand.self,
            EventCommand.self,
            VersionCommand.self,
            HealthCommand.self,
            MetricsCommand.self,
        ])

    /// Never read: ``main()`` moves global options written before the
    /// subcommand after it, where each command reads its own copy. Declaring
    /// them here too lets help and the shell completion scripts know that
    /// `remapctl --socket S pool show <TAB>` has a subcommand after `S`.
    @OptionGroup(title: "Global options")
    var global: GlobalOptions

    /// Exit status for a wrong command line. ArgumentParser uses 64
    /// (`EX_USAGE`); remap's tools use 2, like most Unix commands.
    static let usageExitCode = ExitCode(2)

    /// Options that take a value and that every command accepts.
    static let globalOptionsWithValue: Set<String> = ["--socket", "--url", "--token", "--token-file"]

    /// Moves global options written before the subcommand
    /// (`remapctl --socket S volume list`) after it, where ArgumentParser
    /// looks for them.
    static func globalOptionsLast(_ arguments: [String]) -> [String] {
        var leading: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            let name = String(argument.split(separator: "=", maxSplits: 1).first ?? "")
            if globalOptionsWithValue.contains(argument), index + 1 < arguments.count {
                leading += [argument, arguments[index + 1]]
                index += 2
            } else if globalOptionsWithValue.contains(name) || argument == "--json" {
                leading.append(argument)
                index += 1
            } else {
                break
            }
        }
        guard !leading.isEmpty, index < arguments.count else { return arguments }
        return Array(arguments[index...]) + leading
    }

    /// Runs the command, mapping failures to remapctl's exit statuses and
    /// its one-line error format.
    static func main() {
        do {
            var command = try parseAsRoot(globalOptionsLast(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch let error as ClientError {
            Output.printError(error.message)
            exit(withError: ExitCode.failure)
        } catch {
            guard exitCode(for: error) == .validationFailure else {
                exit(withError: error)
            }
            // ArgumentParser's message (with usage) goes out as usual; only the
            // status changes.
            Output.print(toStandardError: fullMessage(for: error) + "\n")
            exit(withError: usageExitCode)
        }
    }
}
