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

/// The body of `PATCH /v1/pools/{name}`: the settings to change.
struct PoolUpdate: Encodable, Sendable {
    var onNoSpace: OnNoSpace?
    var lowSpaceThresholds: [Int]?
}

/// The body of `PATCH /v1/pools/{name}/suppliers/{id}`: a file supplier's
/// new, larger size.
struct SupplierResize: Encodable, Sendable {
    var sizeBytes: Int
}

/// The body of `POST /v1/pools`.
struct PoolSpec: Encodable, Sendable {
    var name: String
    /// The server picks 64 KiB when omitted.
    var chunkSizeBytes: Int?
    var suppliers: [SupplierSpec]
}

/// A supplier to add to a pool: the body of `POST /v1/pools/{name}/suppliers`
/// and an element of ``PoolSpec/suppliers``.
enum SupplierSpec: Encodable, Equatable, Sendable {
    /// A file remapd creates (it must not exist yet) under its supplier
    /// directory.
    case file(path: String, sizeBytes: Int, preallocate: Bool)
    /// An existing block device, used whole.
    case block(path: String)

    private enum CodingKeys: String, CodingKey {
        case kind, path, sizeBytes, preallocate
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .file(let path, let sizeBytes, let preallocate):
            try container.encode("file", forKey: .kind)
            try container.encode(path, forKey: .path)
            try container.encode(sizeBytes, forKey: .sizeBytes)
            try container.encode(preallocate, forKey: .preallocate)
        case .block(let path):
            try container.encode("block", forKey: .kind)
            try container.encode(path, forKey: .path)
        }
    }
}
