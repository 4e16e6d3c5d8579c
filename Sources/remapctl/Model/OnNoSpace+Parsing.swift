import RemapWire

extension OnNoSpace {
    /// The setting in words, for `pool show`.
    var explanation: String {
        switch self {
        case .error: "error (fail writes with ENOSPC at once)"
        case .queue(let seconds): "queue:\(seconds) (writes wait up to \(Seconds(seconds)) for space, then ENOSPC)"
        case .other(let text): text
        }
    }

    /// Why an `--on-no-space` value was refused.
    struct ParseError: Error, CustomStringConvertible {
        let description: String
    }

    /// Parses `error`, or `queue:SECONDS` where SECONDS may carry a unit
    /// (`queue:30`, `queue:2m`). The range (1–300 s) is remapd's to check.
    init(parsing text: String) throws(ParseError) {
        let trimmed = text.trimmed.lowercased()
        if trimmed == "error" {
            self = .error
            return
        }
        guard trimmed.hasPrefix("queue:") else {
            throw ParseError(description: "use 'error' or 'queue:SECONDS' (e.g. queue:30)")
        }
        do throws(Seconds.ParseError) {
            self = .queue(seconds: try Seconds(parsing: String(trimmed.dropFirst("queue:".count))).value)
        } catch {
            throw ParseError(description: "queue:SECONDS: \(error)")
        }
    }
}
