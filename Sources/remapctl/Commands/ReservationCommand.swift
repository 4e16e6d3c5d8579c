import ArgumentParser
import RemapWire

/// `remapctl reservation …`: promises of space for a volume's writes.
struct ReservationCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reservation",
        abstract: "Reserve space for a volume's writes, and list, renew and release reservations.",
        discussion: """
            A reservation is a promise of space: writes it covers never fail for \
            lack of space. A pooled reservation (--bytes) sets bytes aside in the \
            pool for writes through an export bound to it (remapctl export create \
            VOLUME --reservation ID); a range reservation (--offset, --length) backs \
            every chunk of the range now. Sizes are rounded up to whole chunks. \
            With --ttl the reservation is a lease that lapses unless renewed.
            """,
        subcommands: [Create.self, List.self, Show.self, Renew.self, Delete.self])

    /// The help for a `--ttl` option.
    static let ttlHelp = ArgumentHelp(
        "Make it a lease for this long: seconds, or a number with s, m, h or d (90s, 10m, 2h, 1d).",
        valueName: "duration")

    /// The volume and the reservation's ID.
    struct IdentityArguments: ParsableArguments {
        @OptionGroup var target: VolumeArgument

        @Argument(help: "The reservation's ID.", completion: Completion.reservations)
        var id: String

        var volume: String { target.volume }

        func validate() throws {
            if id.isEmpty { throw ValidationError("The reservation ID must not be empty.") }
        }
    }
}

extension ReservationCommand {
    /// `remapctl reservation create VOLUME (--bytes SIZE | --offset O --length L) [--ttl D] [--name N]`
    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Reserve space for a volume.",
            discussion: """
                  remapctl reservation create vm1 --bytes 256M --name backup --ttl 1h
                  remapctl reservation create vm1 --offset 0 --length 1G

                The pool must hold the space now, or the reservation is refused \
                with insufficient-space. Creating one with the name and spec of an \
                existing reservation reports that one.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var target: VolumeArgument

        @Option(
            help: ArgumentHelp(
                "A pooled reservation of this size: bytes, or K, M, G, T, P (1K = 1024).", valueName: "size"),
            transform: { text in try ByteSize(parsing: text) })
        var bytes: ByteSize?

        @Option(
            help: ArgumentHelp("A range reservation starting here (with --length).", valueName: "offset"),
            transform: { text in try ByteSize(parsing: text, allowingZero: true) })
        var offset: ByteSize?

        @Option(
            help: ArgumentHelp("The length of the range (with --offset).", valueName: "size"),
            transform: { text in try ByteSize(parsing: text) })
        var length: ByteSize?

        @Option(help: ReservationCommand.ttlHelp, transform: { text in try Seconds(parsing: text) })
        var ttl: Seconds?

        @Option(help: ArgumentHelp("A name for the reservation.", valueName: "name"))
        var name: String?

        func validate() throws {
            switch (bytes != nil, offset != nil, length != nil) {
            case (true, false, false), (false, true, true):
                break
            case (true, _, _):
                throw ValidationError("Give either --bytes or --offset with --length, not both.")
            case (false, false, false):
                throw ValidationError("Give --bytes SIZE (pooled) or --offset O --length L (range).")
            case (false, _, _):
                throw ValidationError("A range reservation needs both --offset and --length.")
            }
            if name?.isEmpty == true { throw ValidationError("--name needs a name.") }
        }

        func run() throws {
            let spec = ReservationSpec(
                bytes: bytes?.bytes, offsetBytes: offset?.bytes, lengthBytes: length?.bytes,
                ttlSeconds: ttl?.value, name: name)
            let reply = try global.makeClient().createReservation(spec, forVolume: target.volume)
            Output.changed(reply, json: global.json) { "reservation \($0.id) \(reply.outcome)" }
        }
    }

    /// `remapctl reservation list VOLUME`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List a volume's reservations.",
            discussion: """
                SIZE is what was reserved (whole chunks), USED how much of it writes \
                have drawn on; EXPIRES is never for a reservation without a lease.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var target: VolumeArgument

        func run() throws {
            let reply = try global.makeClient().reservations(ofVolume: target.volume)
            Output.answer(reply, json: global.json) { Reservation.table($0.reservations) }
        }
    }

    /// `remapctl reservation show VOLUME ID`
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one reservation.")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var identity: IdentityArguments

        func run() throws {
            let reply = try global.makeClient().reservation(identity.id, ofVolume: identity.volume)
            Output.show(reply, json: global.json)
        }
    }

    /// `remapctl reservation renew VOLUME ID [--ttl D]`
    struct Renew: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Extend a lease.",
            discussion: """
                The lease then ends --ttl from now, or its original TTL from now \
                without --ttl. A reservation without a lease cannot be renewed.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var identity: IdentityArguments

        @Option(
            help: ArgumentHelp(
                "The new lease, from now: seconds, or a number with s, m, h or d (default: the original TTL).",
                valueName: "duration"),
            transform: { text in try Seconds(parsing: text) })
        var ttl: Seconds?

        func run() throws {
            let reply = try global.makeClient().renewReservation(
                identity.id, ofVolume: identity.volume, ttlSeconds: ttl?.value)
            Output.changed(reply, json: global.json) { "reservation \($0.id) renewed" }
        }
    }

    /// `remapctl reservation delete VOLUME ID`
    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Release a reservation.",
            discussion: """
                What was not used returns to the pool once the writes drawing on it \
                have completed; what was written stays with the volume.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var identity: IdentityArguments

        func run() throws {
            try global.makeClient().deleteReservation(identity.id, ofVolume: identity.volume)
            Output.deleted("reservation", identity.id, json: global.json)
        }
    }
}
