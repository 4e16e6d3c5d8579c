import ArgumentParser

// The names commands act on, each with its completion and its check, for
// the commands to take as option groups.

/// A pool, named by the command's one argument.
struct PoolName: ParsableArguments {
    @Argument(help: "The pool's name.", completion: Completion.pools)
    var name: String

    func validate() throws {
        if name.isEmpty { throw ValidationError("The pool name must not be empty.") }
    }
}

/// A volume, named by the command's one argument.
struct VolumeName: ParsableArguments {
    @Argument(help: "The volume's name.", completion: Completion.volumes)
    var name: String

    func validate() throws {
        if name.isEmpty { throw ValidationError("The volume name must not be empty.") }
    }
}

/// A volume the command's further arguments belong to.
struct VolumeArgument: ParsableArguments {
    @Argument(help: "The volume's name.", completion: Completion.volumes)
    var volume: String

    func validate() throws {
        if volume.isEmpty { throw ValidationError("The volume name must not be empty.") }
    }
}

/// A snapshot: `VOLUME@NAME` or its ID.
struct SnapshotArgument: ParsableArguments {
    @Argument(
        help: ArgumentHelp("The snapshot: VOLUME@NAME or its ID.", valueName: "snapshot"),
        completion: Completion.snapshots)
    var snapshot: String

    func validate() throws {
        if snapshot.isEmpty { throw ValidationError("The snapshot must not be empty.") }
    }
}

/// An operation, by its ID.
struct OperationArgument: ParsableArguments {
    @Argument(help: "The operation's ID.", completion: Completion.operations)
    var id: String

    func validate() throws {
        if id.isEmpty { throw ValidationError("The operation ID must not be empty.") }
    }
}
