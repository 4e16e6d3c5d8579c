@_exported import Logging  // callers write `log.notice(...)` with one import

/// remapd's log: one line per message on standard error, with the journal's
/// priority prefix (see `JournalLogHandler`). Call sites say how much a
/// message matters: `log.error(...)` for a failure, `log.warning(...)` for
/// something an operator should look at, `log.notice(...)` for a change of
/// state, `log.info(...)` for what remapd is doing, `log.debug(...)` for
/// every request.
///
/// A variable so that remapd can set its level (`--log-level`) once, at the
/// start of `run()`, before any other thread exists; after that it is only
/// read, from any thread.
public nonisolated(unsafe) var log = Logger(label: "remapd") { JournalLogHandler(label: $0) }
