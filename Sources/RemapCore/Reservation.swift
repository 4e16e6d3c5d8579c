/// A promise of space in a volume's pool, named by an opaque cookie (`id`).
///
/// Pooled: `chunkCount` chunks set aside; writes that draw on it take their
/// new chunks from it (`remaining` counts what is left). Range: every chunk
/// of `firstChunk ..< firstChunk + chunkCount` is backed now; chunks it
/// mapped for the purpose are "reserved-unwritten" (clean, read zeros) until
/// written, and `remaining` counts those. Either way `remaining` chunks are
/// the unused part that goes back to the pool on release.
///
/// Owned by the engine thread.
public final class Reservation {
    public enum Kind: Equatable, Sendable {
        case pooled
        case range(firstChunk: UInt64)
    }

    /// What a reservation is for, beyond the API's own.
    public enum Role: String, Sendable {
        case plain = ""
        /// The pooled reservation of `"reservation": {"bytes": N}`: every write to the volume draws on it.
        case volumeDefault = "default"
        /// The range reservation of `"reservation": "thick"`: covers the whole volume, grows with it.
        case thick
        /// Copy-on-write space a snapshot set aside for a range reservation
        /// (named by the range reservation's id): CoW writes inside that
        /// range draw on it, so the range stays writable (sticky).
        case copyOnWrite = "cow"
    }

    public let id: String
    public let name: String?
    public unowned let volume: Volume
    public let kind: Kind
    public var role: Role
    public private(set) var chunkCount: UInt64
    public private(set) var remaining: UInt64 = 0
    public var ttlSeconds: UInt64?
    /// Unix time at which an unrenewed lease ends.
    public var expiresAt: Int64?
    /// The holder released it (DELETE or expiry); it ends once `inFlight` is 0.
    public var released = false
    /// Writes in flight that drew on it, and the chunks they drew.
    public var inFlight = 0
    public var drawnInFlight: UInt64 = 0
    /// Chunks drawn by writes that failed: they come back once zeroed and
    /// free (not before: pooled space is always backed by free chunks).
    public var owed: UInt64 = 0
    /// What metadata keeps as its remaining chunks: what a restart gives
    /// back, counting chunks drawn by writes not yet durable or owed back.
    public var durableRemaining: UInt64 { remaining + drawnInFlight + owed }
    /// Range reservations: which chunks of the range are reserved-unwritten.
    private var unwritten: [UInt64] = []
    /// Which reserved-unwritten chunks may hold bytes (a kill -9 before the
    /// write that reached them was committed, or a failed copy into them):
    /// they still read zeros, and their first write fills them whole.
    /// Allocated on first use.
    private var maybeData: [UInt64] = []

    public init(id: String, name: String?, volume: Volume, kind: Kind, role: Role = .plain, chunkCount: UInt64,
                ttlSeconds: UInt64? = nil, expiresAt: Int64? = nil) {
        self.id = id
        self.name = name
        self.volume = volume
        self.kind = kind
        self.role = role
        self.chunkCount = chunkCount
        self.ttlSeconds = ttlSeconds
        self.expiresAt = expiresAt
        if case .range = kind { unwritten = Array(repeating: 0, count: Int((chunkCount + 63) / 64)) }
    }

    public var chunkSize: UInt64 { volume.pool.chunkSize }
    public var bytes: UInt64 { chunkCount * chunkSize }
    public var usedBytes: UInt64 { (chunkCount - min(remaining, chunkCount)) * chunkSize }

    // MARK: Pooled

    /// Sets the chunks left (pooled; at creation and at load).
    public func setRemaining(_ count: UInt64) {
        precondition(kind == .pooled, "only pooled reservations count remaining chunks directly")
        remaining = count
    }

    /// Draws one chunk (pooled); false when none is left.
    public func draw() -> Bool {
        guard kind == .pooled, remaining > 0 else { return false }
        remaining -= 1
        return true
    }

    /// Gives back a chunk drawn by a write that did not happen.
    public func undraw() { remaining += 1 }

    /// Chunks it holds (pooled): those left and those owed back by failed
    /// writes, which return once zeroed. A copy-on-write reservation's need
    /// is measured against this, not `remaining`, or a failed copy's chunk
    /// would be held twice.
    public var held: UInt64 { remaining + owed }

    /// Holds `count` chunks in all (pooled): grows `remaining`, or lowers it
    /// and then what is owed (fewer chunks come back). Returns the change to
    /// `remaining`, which the pool's reserved count follows.
    public func hold(_ count: UInt64) -> Int64 {
        precondition(kind == .pooled, "only pooled reservations count remaining chunks directly")
        if count >= held {
            let added = count - held
            remaining += added
            return Int64(added)
        }
        let cut = held - count
        let fromRemaining = min(cut, remaining)
        remaining -= fromRemaining
        owed -= cut - fromRemaining
        return -Int64(fromRemaining)
    }

    // MARK: Range

    public var range: Range<UInt64>? {
        guard case .range(let first) = kind else { return nil }
        return first..<(first + chunkCount)
    }

    public func isUnwritten(_ virtual: UInt64) -> Bool {
        guard let range, range.contains(virtual) else { return false }
        let bit = virtual - range.lowerBound
        return unwritten[Int(bit / 64)] & (1 << (bit % 64)) != 0
    }

    /// Marks a chunk of the range reserved-unwritten (owned by this
    /// reservation); `clean` says it holds zeros (fresh, or just zeroed).
    public func markUnwritten(_ virtual: UInt64, clean: Bool = true) {
        guard let range, range.contains(virtual), !isUnwritten(virtual) else { return }
        let bit = virtual - range.lowerBound
        unwritten[Int(bit / 64)] |= 1 << (bit % 64)
        remaining += 1
        setMayHoldData(bit, !clean)
    }

    /// A reserved-unwritten chunk was written (or leaves the reservation).
    public func markWritten(_ virtual: UInt64) {
        guard isUnwritten(virtual), let range else { return }
        let bit = virtual - range.lowerBound
        unwritten[Int(bit / 64)] &= ~(1 << (bit % 64))
        remaining -= 1
        setMayHoldData(bit, false)
    }

    /// Whether reserved-unwritten chunk `virtual` may hold bytes (see `maybeData`).
    public func mayHoldData(_ virtual: UInt64) -> Bool {
        guard isUnwritten(virtual), let range else { return false }
        let bit = virtual - range.lowerBound
        return Int(bit / 64) < maybeData.count && maybeData[Int(bit / 64)] & (1 << (bit % 64)) != 0
    }

    /// A reserved-unwritten chunk may hold bytes now (it still reads zeros).
    public func markMayHoldData(_ virtual: UInt64) {
        guard isUnwritten(virtual), let range else { return }
        setMayHoldData(virtual - range.lowerBound, true)
    }

    private func setMayHoldData(_ bit: UInt64, _ value: Bool) {
        let word = Int(bit / 64)
        if word >= maybeData.count {
            guard value else { return }
            maybeData.append(contentsOf: repeatElement(0, count: unwritten.count - maybeData.count))
        }
        if value { maybeData[word] |= 1 << (bit % 64) } else { maybeData[word] &= ~(1 << (bit % 64)) }
    }

    /// Every reserved-unwritten chunk, in order.
    public var unwrittenChunks: [UInt64] {
        guard let range else { return [] }
        var chunks: [UInt64] = []
        for (index, word) in unwritten.enumerated() where word != 0 {
            for bit in 0..<64 where word & (1 << UInt64(bit)) != 0 {
                chunks.append(range.lowerBound + UInt64(index * 64 + bit))
            }
        }
        return chunks
    }

    /// Changes the range's length (thick reservations follow the volume).
    /// Chunks cut off stop being owned.
    public func resizeRange(chunkCount newCount: UInt64) {
        guard let range else { return }
        if newCount < chunkCount {
            for chunk in (range.lowerBound + newCount)..<range.upperBound where isUnwritten(chunk) { markWritten(chunk) }
        }
        let words = Int((newCount + 63) / 64)
        if words > unwritten.count {
            unwritten.append(contentsOf: repeatElement(0, count: words - unwritten.count))
        } else {
            unwritten.removeLast(unwritten.count - words)
        }
        if maybeData.count > words { maybeData.removeLast(maybeData.count - words) }
        chunkCount = newCount
    }

    public var info: ReservationInfo {
        var offset: UInt64?
        if let range { offset = range.lowerBound * chunkSize }
        return ReservationInfo(
            id: id, volume: volume.name, name: name, kind: kind == .pooled ? "pooled" : "range",
            bytes: bytes, usedBytes: usedBytes, offsetBytes: offset, lengthBytes: range == nil ? nil : bytes,
            expiresAt: expiresAt.map(utcTimestamp(unixSeconds:)), ttlSeconds: ttlSeconds)
    }
}

/// What the control plane shows of a reservation.
public struct ReservationInfo: Codable, Sendable, Equatable {
    public var id: String
    public var volume: String
    public var name: String?
    public var kind: String
    public var bytes: UInt64
    public var usedBytes: UInt64
    public var offsetBytes: UInt64?
    public var lengthBytes: UInt64?
    public var expiresAt: String?
    public var ttlSeconds: UInt64?
}

/// What a client asks to reserve.
public struct ReservationSpec: Sendable, Equatable {
    public enum Amount: Sendable, Equatable {
        case pooled(bytes: UInt64)
        case range(offsetBytes: UInt64, lengthBytes: UInt64)
    }

    public var amount: Amount
    public var ttlSeconds: UInt64?
    public var name: String?

    public init(amount: Amount, ttlSeconds: UInt64?, name: String?) {
        self.amount = amount
        self.ttlSeconds = ttlSeconds
        self.name = name
    }

    public static let maximumTTL: UInt64 = 31_536_000
}

/// `1764093600` → `2026-11-25T18:00:00Z` (days from civil, no Foundation).
public func utcTimestamp(unixSeconds: Int64) -> String {
    let days = unixSeconds >= 0 ? unixSeconds / 86_400 : (unixSeconds - 86_399) / 86_400
    let seconds = unixSeconds - days * 86_400
    let z = days + 719_468
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let dayOfEra = z - era * 146_097
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
    let monthPrime = (5 * dayOfYear + 2) / 153
    let day = dayOfYear - (153 * monthPrime + 2) / 5 + 1
    let month = monthPrime < 10 ? monthPrime + 3 : monthPrime - 9
    let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
    func two(_ value: Int64) -> String { value < 10 ? "0\(value)" : "\(value)" }
    return "\(year)-\(two(month))-\(two(day))T\(two(seconds / 3600)):\(two(seconds / 60 % 60)):\(two(seconds % 60))Z"
}
