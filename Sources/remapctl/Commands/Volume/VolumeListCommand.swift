import ArgumentParser
import RemapWire

extension VolumeCommand {
    /// `remapctl volume list [--pool POOL] [--label SELECTOR] [--limit N [--all]] [--page-token TOKEN]`
    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List volumes, sorted by name.",
            discussion: """
                remapd hands out the list in pages. By default remapctl fetches \
                every page and shows the whole list. With --limit N it shows one \
                page of at most N volumes and, when more follow, says on standard \
                error which --page-token continues (with --json the page's \
                nextPageToken is in the output); add --all to fetch every page, N \
                volumes per request.
                """)

        @OptionGroup var global: GlobalOptions

        @Option(
            help: ArgumentHelp("Only volumes of this pool.", valueName: "pool"),
            completion: Completion.pools)
        var pool: String?

        @Option(help: ArgumentHelp(
            "Only volumes with this label: key=value, or key for any value.", valueName: "selector"))
        var label: String?

        @Option(help: ArgumentHelp("Volumes per page, 1 to 1000; shows one page unless --all.", valueName: "n"))
        var limit: Int?

        @Flag(help: "Fetch every page (the default without --limit).")
        var all = false

        @Option(help: ArgumentHelp("Start at the page this token names (from an earlier --limit).", valueName: "token"))
        var pageToken: String?

        func validate() throws {
            if let limit, !(1...1000).contains(limit) {
                throw ValidationError("--limit must be from 1 to 1000.")
            }
            if pool?.isEmpty == true { throw ValidationError("--pool needs a name.") }
            if label?.isEmpty == true { throw ValidationError("--label needs key=value or key.") }
            if pageToken?.isEmpty == true { throw ValidationError("--page-token needs a token.") }
        }

        func run() throws {
            let query = VolumeQuery(pool: pool, label: label, limit: limit, pageToken: pageToken)
            let pages = try global.makeClient().volumePages(query, follow: all || limit == nil)
            let volumes = pages.flatMap(\.value.volumes)
            // Set only when one page was asked for and more follow.
            let nextPageToken = pages.count == 1 ? pages[0].value.nextPageToken : nil

            if global.json {
                if pages.count == 1 {
                    Output.printJSON(pages[0].body)
                } else {
                    Output.print(Self.mergedJSON(pages).prettyPrinted + "\n")
                }
                return
            }
            Output.print(Volume.table(volumes))
            if let nextPageToken {
                Output.print(toStandardError: "more volumes follow: add --page-token \(nextPageToken), or --all\n")
            }
        }

        /// One `{"volumes": [...]}` document holding every page's volumes as
        /// remapd sent them, as if the whole list had come in one page.
        static func mergedJSON(_ pages: [APIClient.Reply<VolumeList<Volume>>]) -> JSONValue {
            var volumes: [JSONValue] = []
            for page in pages {
                if case .object(let members)? = JSONValue(parsing: page.body),
                   case .array(let elements)? = members["volumes"] {
                    volumes += elements
                }
            }
            return .object(["volumes": .array(volumes)])
        }
    }
}
