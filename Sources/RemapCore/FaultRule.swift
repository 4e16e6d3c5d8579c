/// A fault to inject into supplier I/O or metadata commits, for tests of
/// what the contract promises when hardware fails (debug builds only: see
/// RemapEngine's `FaultInjector`).
public struct FaultRule: Codable, Sendable, Equatable {
    /// The calls a rule can fault: each goes through one seam.
    public enum Target: String, Codable, Sendable, CaseIterable {
        case supplierRead = "supplier-read"
        case supplierWrite = "supplier-write"
        /// fdatasync of a supplier.
        case supplierSync = "supplier-sync"
        /// fallocate of a supplier: zeroing, punching holes.
        case supplierAllocate = "supplier-allocate"
        /// The SQLite transaction of a metadata commit.
        case metadataCommit = "metadata-commit"
    }

    public enum Effect: String, Codable, Sendable, CaseIterable {
        case eio = "EIO"
        case enospc = "ENOSPC"
        /// A read or write that moves fewer bytes than asked (about half,
        /// cut at a 512-byte boundary as the kernel cuts file I/O at a block
        /// boundary; the caller must resubmit the rest); other calls fail
        /// with EIO.
        case short
        /// The call succeeds after `delayMs`.
        case delay
    }

    public var target: Target
    public var error: Effect
    /// Only calls on this pool's suppliers (not for metadata commits).
    public var pool: String?
    /// Matching calls let through before the rule starts.
    public var after: UInt64
    /// How many calls to fault, then the rule stops; nil: no limit.
    public var count: UInt64?
    /// Chance that a matching call is faulted, drawn from `seed`.
    public var probability: Double
    public var seed: UInt64
    public var delayMs: UInt64

    public init(target: Target, error: Effect, pool: String? = nil, after: UInt64 = 0, count: UInt64? = nil,
                probability: Double = 1, seed: UInt64 = 0, delayMs: UInt64 = 100) {
        self.target = target
        self.error = error
        self.pool = pool
        self.after = after
        self.count = count
        self.probability = probability
        self.seed = seed
        self.delayMs = delayMs
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        target = try container.decode(Target.self, forKey: .target)
        error = try container.decode(Effect.self, forKey: .error)
        pool = try container.decodeIfPresent(String.self, forKey: .pool)
        after = try container.decodeIfPresent(UInt64.self, forKey: .after) ?? 0
        count = try container.decodeIfPresent(UInt64.self, forKey: .count)
        probability = try container.decodeIfPresent(Double.self, forKey: .probability) ?? 1
        seed = try container.decodeIfPresent(UInt64.self, forKey: .seed) ?? 0
        delayMs = try container.decodeIfPresent(UInt64.self, forKey: .delayMs) ?? 100
        guard (0...1).contains(probability) else {
            throw DecodingError.dataCorruptedError(forKey: .probability, in: container,
                                                   debugDescription: "probability must be from 0 to 1")
        }
        guard delayMs <= 60_000 else {
            throw DecodingError.dataCorruptedError(forKey: .delayMs, in: container,
                                                   debugDescription: "delayMs must be at most 60000")
        }
    }
}

/// What `GET /v1/debug/faults` shows: the rules, how often each fired, and
/// how many calls went through each seam.
public struct FaultState: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        public var rule: FaultRule
        public var hits: UInt64
        public init(rule: FaultRule, hits: UInt64) {
            self.rule = rule
            self.hits = hits
        }

        /// Flat: the rule's fields and `hits` in one object.
        public init(from decoder: any Decoder) throws {
            rule = try FaultRule(from: decoder)
            hits = try decoder.container(keyedBy: Key.self).decodeIfPresent(UInt64.self, forKey: .hits) ?? 0
        }

        public func encode(to encoder: any Encoder) throws {
            try rule.encode(to: encoder)
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(hits, forKey: .hits)
        }

        private enum Key: String, CodingKey { case hits }
    }

    public var rules: [Entry]
    public var calls: [String: UInt64]

    public init(rules: [Entry], calls: [String: UInt64]) {
        self.rules = rules
        self.calls = calls
    }
}
