/// Snapshots and clones share chunks by reference.
///
/// In memory every image (volume, snapshot, clone) has its own complete
/// `ChunkMap`; a snapshot starts as a copy of its volume's map, and since the
/// map's pages are copy-on-write arrays, taking one copies nothing: pages are
/// copied only when the volume later changes them. A chunk is shared when
/// another image of the same family maps the same virtual chunk to it; a
/// write there gets a new chunk (copy on write), and a chunk is freed when
/// the last image mapping it lets go.
///
/// In metadata, mappings live in *layers*: a volume writes into its top
/// layer; a snapshot freezes that layer and gives the volume a new, empty
/// one on top of it; a clone starts an empty layer on top of its snapshot's.
/// An image's map is its layer's rows over its parent's, and so on down. So
/// a snapshot is a couple of rows, whatever the volume's size.

/// The images that share chunks (a volume, its snapshots, their clones...).
public final class Family {
    /// Oldest first.
    public var members: [Volume] = []
    /// Chunks a member let go of (copied on write, trimmed, reverted or cut
    /// off) whose new mapping is not durable yet, with how many such changes
    /// are pending. A crash would give them back to that member, so until
    /// then they stay shared: nobody else writes into them in place.
    public private(set) var pendingReleases: [UInt64: Int] = [:]

    public init() {}

    /// A member lets go of `physical`; `endRelease` once that is durable (or undone).
    public func holdRelease(_ physical: UInt64) { pendingReleases[physical, default: 0] += 1 }

    public func endRelease(_ physical: UInt64) {
        guard let count = pendingReleases[physical] else { return }
        pendingReleases[physical] = count > 1 ? count - 1 : nil
    }

    /// Who the members are and which version of their maps they hold: equal
    /// fingerprints mean equal reference counts.
    public var fingerprint: [UInt64] {
        members.flatMap { [UInt64(bitPattern: $0.key), $0.map.generation] }
    }
}

/// What makes an image a snapshot.
public struct SnapshotIdentity: Sendable, Equatable {
    public var name: String
    /// The name of the volume it was taken of (kept after that volume is deleted).
    public var volume: String
    /// That volume's key.
    public var volumeKey: Int64

    public init(name: String, volume: String, volumeKey: Int64) {
        self.name = name
        self.volume = volume
        self.volumeKey = volumeKey
    }
}

/// What the control plane shows of a snapshot.
public struct SnapshotInfo: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var volume: String
    public var pool: String
    public var sizeBytes: UInt64
    public var createdAt: String
    public var exportName: String
    /// Bytes only this snapshot maps: what deleting it would free.
    public var uniqueBytes: UInt64
    /// Bytes it maps that another image maps too.
    public var sharedBytes: UInt64
    /// Copy-on-write space the volume's range reservations hold because of
    /// its snapshots (the same figure on each snapshot of the volume).
    public var reservedBytes: UInt64

    public init(id: String, name: String, volume: String, pool: String, sizeBytes: UInt64, createdAt: String,
                exportName: String, uniqueBytes: UInt64, sharedBytes: UInt64, reservedBytes: UInt64) {
        self.id = id
        self.name = name
        self.volume = volume
        self.pool = pool
        self.sizeBytes = sizeBytes
        self.createdAt = createdAt
        self.exportName = exportName
        self.uniqueBytes = uniqueBytes
        self.sharedBytes = sharedBytes
        self.reservedBytes = reservedBytes
    }
}

/// A byte range, for the changed-blocks list.
public struct ByteRange: Codable, Sendable, Equatable {
    public var offsetBytes: UInt64
    public var lengthBytes: UInt64

    public init(offsetBytes: UInt64, lengthBytes: UInt64) {
        self.offsetBytes = offsetBytes
        self.lengthBytes = lengthBytes
    }
}

/// The chunk maps of a family, handed off the engine thread so the usage
/// figures (which visit every mapping) are counted elsewhere: the maps are
/// copy-on-write values, so the engine's later writes never touch these.
public struct FamilyView: Sendable {
    public let maps: [ChunkMap]
    public let capacity: UInt64

    public init(_ family: Family, capacity: UInt64) {
        self.maps = family.members.map(\.map)
        self.capacity = capacity
    }

    /// How many maps reference each physical chunk, saturating at 255.
    public func referenceCounts() -> [UInt8] {
        var counts = [UInt8](repeating: 0, count: Int(capacity))
        for map in maps {
            map.forEachRun { _, physical, length in
                for chunk in physical..<(physical + length) where chunk < capacity && counts[Int(chunk)] < 255 {
                    counts[Int(chunk)] += 1
                }
            }
        }
        return counts
    }

    /// Unique and shared mapped chunks of `map`, given the family's counts.
    public static func usage(of map: ChunkMap, counts: [UInt8]) -> (unique: UInt64, shared: UInt64) {
        var unique: UInt64 = 0
        var shared: UInt64 = 0
        map.forEachRun { _, physical, length in
            for chunk in physical..<(physical + length) {
                if Int(chunk) >= counts.count || counts[Int(chunk)] <= 1 { unique += 1 } else { shared += 1 }
            }
        }
        return (unique, shared)
    }
}

extension Volume {
    /// This image's family as a `FamilyView`, or nil when it shares with nobody.
    public var familyView: FamilyView? {
        family.members.count > 1 ? FamilyView(family, capacity: pool.allocator.capacity) : nil
    }

    /// Unique and shared mapped chunks (counted here: for small families or
    /// rare calls; the engine counts big ones off its thread).
    public func usage() -> (unique: UInt64, shared: UInt64) {
        guard let view = familyView else { return (map.mappedCount, 0) }
        return FamilyView.usage(of: map, counts: view.referenceCounts())
    }

    /// Chunks this image maps that no other image of its family maps: what
    /// deleting it frees. Pages shared with another member are skipped whole.
    public func chunksOnlyHere() -> [UInt64] {
        chunks(notMappedBy: othersNearestFirst)
    }

    /// The other images of the family, those likely to share the most
    /// pages with this one first: for a clone the snapshot it was made
    /// from, for a volume or clone its newest snapshots, for a snapshot
    /// those taken just after and before it. With a thousand snapshots,
    /// looking for a page's twin in member order (oldest first) walked most
    /// of them for every page of a volume.
    public var othersNearestFirst: [Volume] {
        let members = family.members
        guard let index = members.firstIndex(where: { $0 === self }) else { return members }
        guard isSnapshot else {
            let newest = members.reversed().filter { $0 !== self }
            guard let origin = originSnapshot, let made = newest.firstIndex(where: { $0.id == origin }) else { return newest }
            return [newest[made]] + newest[..<made] + newest[(made + 1)...]
        }
        var nearest: [Volume] = []
        nearest.reserveCapacity(members.count - 1)
        for distance in 1..<max(1, members.count) {
            if index + distance < members.count { nearest.append(members[index + distance]) }
            if index - distance >= 0 { nearest.append(members[index - distance]) }
        }
        return nearest
    }

    /// Chunks this image maps that none of `others` maps at the same
    /// virtual chunk. Pages shared with one of them are skipped whole.
    public func chunks(notMappedBy others: [Volume]) -> [UInt64] {
        map.chunks(notMappedBy: others.map(\.map))
    }
}

/// The answer of `GET /v1/snapshots/{id}/changes`.
public struct SnapshotChanges: Codable, Sendable, Equatable {
    public init(snapshot: String, base: String?, sizeBytes: UInt64, granularityBytes: UInt64, changedBytes: UInt64, ranges: [ByteRange]) {
        self.snapshot = snapshot
        self.base = base
        self.sizeBytes = sizeBytes
        self.granularityBytes = granularityBytes
        self.changedBytes = changedBytes
        self.ranges = ranges
    }

    public var snapshot: String
    public var base: String?
    public var sizeBytes: UInt64
    public var granularityBytes: UInt64
    public var changedBytes: UInt64
    public var ranges: [ByteRange]

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(snapshot, forKey: .snapshot)
        try container.encode(base, forKey: .base)  // null without a base, not absent
        try container.encode(sizeBytes, forKey: .sizeBytes)
        try container.encode(granularityBytes, forKey: .granularityBytes)
        try container.encode(changedBytes, forKey: .changedBytes)
        try container.encode(ranges, forKey: .ranges)
    }
}

/// A long-running operation (an import), as the control plane shows it.
public struct OperationInfo: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable { case running, succeeded, failed, cancelled }

    public var id: String
    public var kind: String
    public var state: State
    public var volume: String
    public var source: String
    public var totalBytes: UInt64
    public var doneBytes: UInt64
    public var progress: Double
    public var createdAt: String
    public var finishedAt: String?
    /// Why it failed (the RemapAPI layer renders it as a problem object).
    public var failure: RemapError?

    public init(id: String, kind: String, state: State, volume: String, source: String, totalBytes: UInt64, doneBytes: UInt64,
                progress: Double, createdAt: String, finishedAt: String? = nil, failure: RemapError? = nil) {
        self.id = id
        self.kind = kind
        self.state = state
        self.volume = volume
        self.source = source
        self.totalBytes = totalBytes
        self.doneBytes = doneBytes
        self.progress = progress
        self.createdAt = createdAt
        self.finishedAt = finishedAt
        self.failure = failure
    }

    private enum CodingKeys: String, CodingKey {
        case id, kind, state, volume, source, totalBytes, doneBytes, progress, createdAt, finishedAt
    }
}

