import ArgumentParser

/// Shell completion of the names only remapd knows: pools and volumes.
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
