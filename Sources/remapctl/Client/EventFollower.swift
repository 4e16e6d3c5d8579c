import class Foundation.JSONDecoder
import struct Foundation.Data
import Glibc
import RemapWire

/// Follows remapd's event stream (`GET /v1/events`, Server-Sent Events),
/// printing each event as it arrives, for as long as remapctl runs.
///
/// When the stream drops, the follower reconnects with `Last-Event-ID` set
/// to the last event seen, so nothing is missed or printed twice (events a
/// server repeats anyway are skipped by sequence number). A daemon that
/// restarted numbers its events from 1 again; the follower notices and
/// starts over with it. A daemon that answers with the JSON list instead of
/// a stream is polled; one that serves all the streams it may (503) is
/// tried again, backing off to every five seconds.
struct EventFollower {
    let client: APIClient
    /// One JSON object per line instead of readable lines.
    let json: Bool

    /// The `id:` of the last message, sent back as `Last-Event-ID`.
    private var lastEventID: String?
    /// The last event printed: reconnects resume after it, repeats of it
    /// and of older ones are skipped.
    private var lastPrinted: Event?
    /// Where to resume when no event was printed since: `--since`, or the
    /// newest number a poll reported.
    private var resumeAfter: Int?

    /// The number of the last event printed or passed over.
    private var lastSeq: Int? { [lastPrinted?.seq, resumeAfter].compactMap { $0 }.max() }
    /// The wait between reconnects the server asked for with `retry:`.
    private var retryMilliseconds: Int?

    init(client: APIClient, json: Bool, since: Int?) {
        self.client = client
        self.json = json
        self.lastEventID = since.map(String.init)
        self.resumeAfter = since
    }

    /// Prints events until the process is interrupted (SIGINT exits with
    /// status 0).
    ///
    /// - Throws: ``ClientError`` when the first connection fails, when
    ///   remapd answers with an error, or when what it sends is not an event
    ///   stream; a stream that drops later is reconnected, not thrown.
    mutating func run() throws(ClientError) -> Never {
        Self.exitOnInterrupt()
        var connected = false
        var failures = 0
        var polling = false
        while true {
            do throws(ClientError) {
                if connected { try noticeRestart() }
                var stream = try client.stream(request(), bodyTimeoutSeconds: nil)
                if failures > 0 {
                    Output.print(toStandardError: "remapctl: reconnected to the event stream\n")
                }
                connected = true
                failures = 0
                if Self.isEventStream(stream.head) {
                    polling = false
                    var parser = ServerSentEventParser(lastEventID: lastEventID)
                    while let bytes = try stream.next() {
                        for message in parser.feed(bytes) {
                            handle(message)
                        }
                        retryMilliseconds = parser.retryMilliseconds ?? retryMilliseconds
                    }
                } else {
                    if !polling {
                        Output.print(toStandardError: "remapctl: remapd sent no event stream; polling every second\n")
                        polling = true
                    }
                    try printList(stream.remainingBody())
                }
            } catch {
                // Before the first stream, only a busy daemon is waited for:
                // a wrong socket or token should fail at once.
                guard connected || Self.isBusy(error), Self.isTransient(error) else { throw error }
                failures += 1
                if failures == 1 {
                    Output.print(toStandardError: "remapctl: \(error.message); reconnecting\n")
                }
            }
            Pause.milliseconds(delay(afterFailures: failures, polling: polling))
        }
    }

    /// remapd numbers events from 1 each time it starts. After a restart
    /// the old `Last-Event-ID` would hide the new daemon's first events, so
    /// when the daemon no longer has the last event printed under its
    /// number, start over from its first event.
    private mutating func noticeRestart() throws(ClientError) {
        if let lastPrinted {
            let answer = try client.events(since: max(lastPrinted.seq - 1, 0)).value
            if answer.events.first(where: { $0.seq == lastPrinted.seq }) == lastPrinted { return }
            // Missing or different: restarted, or the daemon dropped it as one
            // of more than the 1000 it keeps; starting over suits both.
        } else if let resumeAfter {
            let newest = try client.events(since: resumeAfter).value.lastSeq ?? resumeAfter
            if newest >= resumeAfter { return }
        } else {
            return
        }
        Output.print(toStandardError: "remapctl: remapd restarted; following its events from the start\n")
        lastPrinted = nil
        resumeAfter = nil
        lastEventID = "0"
    }

    private func request() -> HTTPRequest {
        var request = HTTPRequest(
            method: "GET",
            path: QueryString.target("/v1/events", lastSeq.map { [(name: "since", value: String($0))] } ?? []),
            accept: "text/event-stream")
        request.extraHeaders.append((name: "Cache-Control", value: "no-cache"))
        if let lastEventID {
            request.extraHeaders.append((name: "Last-Event-ID", value: lastEventID))
        }
        return request
    }

    private mutating func handle(_ message: ServerSentEventParser.Message) {
        lastEventID = message.lastEventID ?? lastEventID
        if let event = try? JSONDecoder().decode(Event.self, from: Data(message.data.utf8)) {
            printEvent(event, raw: Array(message.data.utf8))
        } else if json {
            let document = JSONValue(parsing: Array(message.data.utf8))
            printLine(document?.compact ?? message.data.singleLine)
        } else {
            printLine("\(message.lastEventID ?? "-")  \(message.event)  \(message.data.singleLine)")
        }
    }

    /// Prints the events of a `GET /v1/events` document.
    private mutating func printList(_ body: [UInt8]) throws(ClientError) {
        let list: EventList<Event>
        do {
            list = try JSONDecoder().decode(EventList<Event>.self, from: Data(body))
        } catch {
            throw .unexpectedBody(path: "/v1/events", reason: "neither an event stream nor an event list")
        }
        let documents: [JSONValue]
        if case .object(let members)? = JSONValue(parsing: body), case .array(let elements)? = members["events"] {
            documents = elements
        } else {
            documents = []
        }
        for (index, event) in list.events.enumerated() {
            let raw = index < documents.count ? Array(documents[index].compact.utf8) : []
            printEvent(event, raw: raw)
        }
        // The next poll asks only for what follows, even when nothing was new.
        if let newest = list.lastSeq, newest > (lastSeq ?? -1) {
            resumeAfter = newest
            lastEventID = String(newest)
        }
    }

    private mutating func printEvent(_ event: Event, raw: [UInt8]) {
        // A server that ignores Last-Event-ID would repeat events.
        if let lastSeq, event.seq <= lastSeq { return }
        lastPrinted = event
        lastEventID = String(event.seq)
        if json {
            printLine(JSONValue(parsing: raw)?.compact ?? String(decoding: raw, as: UTF8.self).singleLine)
        } else {
            printLine(event.line)
        }
    }

    private func printLine(_ text: String) {
        Output.print(text + "\n")
        Output.flush()
    }

    /// How long to wait before connecting again: what the server asked for,
    /// else a second, backing off to five while connections keep failing.
    private func delay(afterFailures failures: Int, polling: Bool) -> Int {
        if failures == 0 {
            return polling ? 1000 : (retryMilliseconds ?? 1000)
        }
        return min(500 << min(failures, 4), 5000)
    }

    private static func isEventStream(_ head: HTTPResponse) -> Bool {
        let type = head.header("Content-Type")?.split(separator: ";").first?.trimmed.lowercased()
        return type == "text/event-stream"
    }

    /// Failures a later attempt may not meet: the daemon restarting, the
    /// connection dropping, the daemon busy (503: as many event streams
    /// as it serves at once; nothing is missed meanwhile, the reconnect
    /// asks for what followed the last event seen).
    private static func isTransient(_ error: ClientError) -> Bool {
        switch error {
        case .noSocketFound, .cannotConnect, .cannotResolve, .connectionLost, .timedOut:
            true
        case .problem:
            isBusy(error)
        case .malformedResponse, .unexpectedBody, .unreadableTokenFile, .lookupFailed, .localFile:
            false
        }
    }

    private static func isBusy(_ error: ClientError) -> Bool {
        if case .problem(_, 503, _) = error { true } else { false }
    }

    /// Ctrl-C ends a follow as a success: it is how one stops it. Every
    /// line printed was flushed already, so nothing is lost by `_exit`.
    private static func exitOnInterrupt() {
        signal(SIGINT) { _ in _exit(0) }
    }
}
