import Glibc
import Logging
import RemapCore

/// A swift-log handler that writes every message as one line to a file
/// descriptor (standard error: the journal under systemd).
///
/// A line is `<P>label: message`, where `<P>` is the message's syslog
/// priority as sd-daemon(3) spells it (`SD_ERR` is `<3>` … `SD_DEBUG` is
/// `<7>`): journald files the line under that priority and strips the
/// prefix, so `journalctl -p warning` shows warnings and worse. Text a
/// client chose (a name, a path, a label) reaches log lines, so the
/// message and its metadata are escaped here (`LogText`), at the one sink:
/// no caller can forget, and no client can start a line of its own.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let fileDescriptor: Int32

    /// Writes messages of `level` and above to `fileDescriptor`, which the
    /// handler does not own (it never closes it).
    public init(label: String, level: Logger.Level = .info, fileDescriptor: Int32 = STDERR_FILENO) {
        self.label = label
        self.logLevel = level
        self.fileDescriptor = fileDescriptor
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var text = "\(event.message)"
        var fields = metadata.merging(event.metadata ?? [:]) { _, explicit in explicit }
        if let error = event.error { fields["error"] = "\(error)" }
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) { text += " \(key)=\(value)" }
        // One write(2) per line, so lines from different threads do not interleave.
        let line = Array("<\(Self.priority(event.level))>\(label): \(LogText.escaped(text))\n".utf8)
        line.withUnsafeBytes { _ = write(fileDescriptor, $0.baseAddress, $0.count) }
    }

    /// The syslog priority of `level` (syslog(3): LOG_ERR is 3 … LOG_DEBUG is 7).
    static func priority(_ level: Logger.Level) -> Int32 {
        switch level {
        case .trace, .debug: LOG_DEBUG
        case .info: LOG_INFO
        case .notice: LOG_NOTICE
        case .warning: LOG_WARNING
        case .error: LOG_ERR
        case .critical: LOG_CRIT
        }
    }
}
