import ArgumentParser
import RemapWire

/// Shell completion of the names only remapd knows: pools, volumes,
/// suppliers, reservations, exports, snapshots and operations.
///
/// The completion script runs remapctl when TAB is pressed; remapctl then
/// asks the daemon named by the `--socket`, `--url` and token options already
/// on the command line (or the defaults). Any failure completes nothing
/// rather than printing an error into the user's prompt.
///
/// Every name is offered and the shell keeps those matching the word being
/// completed (bash's `compgen`, zsh and fish all filter). remapctl does not
/// filter itself: the prefix ArgumentParser hands over is taken from the last
/// word of the line, which is not the word being completed when options
/// follow it.
enum Completion {
    /// How long completion waits for the daemon; a stuck TAB is worse than none.
    static let timeoutSeconds = 2

    static let pools = CompletionKind.custom { words, _, _ in
        names(words: words) { (client) throws(ClientError) in
            try client.pools().value.pools.map(\.name)
        }
    }

    static let volumes = CompletionKind.custom { words, _, _ in
        names(words: words) { (client) throws(ClientError) in
            try client.volumePages(VolumeQuery(), follow: true).flatMap { $0.value.volumes.map(\.name) }
        }
    }

    /// The IDs of the reservations of the volume named earlier on the line
    /// (`remapctl reservation show VOLUME <TAB>`).
    static let reservations = CompletionKind.custom { words, index, _ in
        guard let volume = leafArguments(in: words, before: index).first else { return [] }
        return names(words: words) { (client) throws(ClientError) in
            try client.reservations(ofVolume: volume).value.reservations.map(\.id)
        }
    }

    static let exports = CompletionKind.custom { words, _, _ in
        names(words: words) { (client) throws(ClientError) in
            try client.exports().value.exports.map(\.name)
        }
    }

    /// Every snapshot as `VOLUME@NAME`.
    ///
    /// bash splits words at `@` (it is in `COMP_WORDBREAKS`), so there a
    /// name completes only while the word has no `@` yet; zsh and fish
    /// complete it whole.
    static let snapshots = CompletionKind.custom { words, _, _ in
        names(words: words) { (client) throws(ClientError) in
            try client.snapshots().value.snapshots.map(\.address)
        }
    }

    /// The names of the snapshots of the volume named earlier on the line
    /// (`remapctl volume revert VOLUME <TAB>`).
    static let snapshotsOfVolume = CompletionKind.custom { words, index, _ in
        guard let volume = leafArguments(in: words, before: index).first else { return [] }
        return names(words: words) { (client) throws(ClientError) in
            try client.snapshots(ofVolume: volume).value.snapshots.map(\.name)
        }
    }

    /// For `snapshot changes VOLUME@NAME --base <TAB>`: the names of that
    /// volume's other snapshots; every snapshot as `VOLUME@NAME` when the
    /// snapshot is given by ID.
    static let baseSnapshots = CompletionKind.custom { words, index, _ in
        let snapshot = leafArguments(in: words, before: index).first
        return names(words: words) { (client) throws(ClientError) in
            if let snapshot, let at = snapshot.firstIndex(of: "@") {
                let volume = String(snapshot[..<at])
                return try client.snapshots(ofVolume: volume).value.snapshots.map(\.name)
                    .filter { "\(volume)@\($0)" != snapshot }
            }
            return try client.snapshots().value.snapshots.map(\.address).filter { $0 != snapshot }
        }
    }

    static let operations = CompletionKind.custom { words, _, _ in
        names(words: words) { (client) throws(ClientError) in
            try client.operations().value.operations.map(\.id)
        }
    }

    /// The IDs and paths of the suppliers of the pool named earlier on the
    /// line (`remapctl pool grow POOL --supplier <TAB>`).
    static let suppliers = CompletionKind.custom { words, index, _ in
        guard let pool = leafArguments(in: words, before: index).first else { return [] }
        return names(words: words) { (client) throws(ClientError) in
            try client.pool(named: pool).value.suppliers.flatMap { [$0.id, $0.path] }
        }
    }

    /// Options of any remapctl command that take a separate value, so that
    /// the value is not mistaken for a positional argument.
    private static let optionsWithValue: Set<String> = RemapCtl.globalOptionsWithValue.union([
        "--size", "--pool", "--label", "--limit", "--page-token", "--remove", "--file", "--block",
        "--chunk-size", "--reservation", "--bytes", "--offset", "--length", "--ttl", "--name",
        "--supplier", "--add-file", "--on-no-space", "--thresholds", "--nbd-socket", "--since", "--base",
    ])

    /// The positional arguments of the leaf command among `words[..<index]`,
    /// unquoted: `remapctl reservation show vm1 <TAB>` gives `["vm1"]`.
    /// The first word is the program and the next two positionals name the
    /// command group and the command.
    static func leafArguments(in words: [String], before index: Int) -> [String] {
        var positionals: [String] = []
        var position = 1
        while position < min(index, words.count) {
            let word = words[position]
            if optionsWithValue.contains(word) {
                position += 2
                continue
            }
            if !word.hasPrefix("-") { positionals.append(unquoted(word)) }
            position += 1
        }
        return Array(positionals.dropFirst(2))
    }

    private static func names(
        words: [String], _ fetch: (APIClient) throws(ClientError) -> [String]
    ) -> [String] {
        guard let options = try? GlobalOptions.parse(globalOptions(in: words)),
              let client = try? options.makeClient(timeoutSeconds: timeoutSeconds),
              let names = try? fetch(client)
        else { return [] }
        return names.sorted()
    }

    /// The global options among the shell words, wherever they stand, with
    /// plain surrounding quotes removed (the words arrive as typed).
    private static func globalOptions(in words: [String]) -> [String] {
        var found: [String] = []
        var index = 0
        while index < words.count {
            let word = words[index]
            let name = String(word.split(separator: "=", maxSplits: 1).first ?? "")
            if RemapCtl.globalOptionsWithValue.contains(word), index + 1 < words.count {
                found += [word, unquoted(words[index + 1])]
                index += 2
                continue
            }
            if RemapCtl.globalOptionsWithValue.contains(name), let equals = word.firstIndex(of: "=") {
                found.append(name + "=" + unquoted(String(word[word.index(after: equals)...])))
            }
            index += 1
        }
        return found
    }

    private static func unquoted(_ word: String) -> String {
        for quote in ["'", "\""] where word.count >= 2 && word.hasPrefix(quote) && word.hasSuffix(quote) {
            return String(word.dropFirst().dropLast())
        }
        return word
    }
}
