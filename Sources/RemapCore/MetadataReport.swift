/// What `remapd check` found in a state directory's metadata: figures per
/// pool and every problem, each counted and with a capped list of the
/// chunks concerned (like `GET /v1/pools/{name}/check`).
public struct MetadataReport: Codable, Sendable, Equatable {
    /// No finding is an error (notes may remain).
    public var ok: Bool
    public var errorCount: Int
    public var noteCount: Int
    public var pools: [PoolFigures]
    /// Findings that belong to no single pool (layers, reservations of
    /// missing volumes, unreadable values...).
    public var findings: [MetadataFinding]
    /// What was looked at.
    public var volumeCount: Int
    public var snapshotCount: Int
    public var layerCount: Int
    public var mappingRowCount: UInt64

    public init(pools: [PoolFigures], findings: [MetadataFinding], volumeCount: Int = 0, snapshotCount: Int = 0,
                layerCount: Int = 0, mappingRowCount: UInt64 = 0) {
        let all = findings + pools.flatMap(\.findings)
        self.errorCount = all.count(where: { $0.severity == .error })
        self.noteCount = all.count - errorCount
        self.ok = errorCount == 0
        self.pools = pools
        self.findings = findings
        self.volumeCount = volumeCount
        self.snapshotCount = snapshotCount
        self.layerCount = layerCount
        self.mappingRowCount = mappingRowCount
    }

    /// A pool's figures as the engine will count them at its next start.
    /// `allocatedBytes + reservedBytes + freeBytes == capacityBytes` when
    /// the pool is not overcommitted, as `GET /v1/pools` reports them.
    public struct PoolFigures: Codable, Sendable, Equatable {
        public var name: String
        /// No finding of this pool is an error.
        public var ok: Bool
        public var chunkSizeBytes: UInt64
        public var capacityChunks: UInt64
        /// Distinct physical chunks some image maps (reserved-unwritten ones included).
        public var mappedChunks: UInt64
        /// Mapped chunks a range reservation backs and nobody wrote.
        public var unwrittenChunks: UInt64
        /// What pooled reservations hold and have not drawn.
        public var reservedChunks: UInt64
        public var freeChunks: UInt64
        /// Freed or prepared chunks the engine zeroes at start (those still
        /// mapped just lose the mark).
        public var dirtyChunks: UInt64
        public var capacityBytes: UInt64
        public var allocatedBytes: UInt64
        public var reservedBytes: UInt64
        public var freeBytes: UInt64
        public var volumeCount: Int
        public var snapshotCount: Int
        public var findings: [MetadataFinding]
    }

    /// One line per finding, then a summary line.
    public var lines: [String] {
        var lines: [String] = []
        for pool in pools {
            let size = ByteCount.format(pool.chunkSizeBytes)
            lines.append("pool '\(pool.name)': capacity \(pool.capacityChunks) chunks of \(size) (\(ByteCount.format(pool.capacityBytes))), "
                + "mapped \(pool.mappedChunks) (unwritten \(pool.unwrittenChunks)), reserved \(pool.reservedChunks), "
                + "free \(pool.freeChunks), dirty \(pool.dirtyChunks); \(pool.volumeCount) volume(s), \(pool.snapshotCount) snapshot(s): "
                + (pool.ok ? "ok" : "errors"))
            lines += pool.findings.map(\.line)
        }
        lines += findings.map(\.line)
        lines.append("\(pools.count) pool(s), \(volumeCount) volume(s), \(snapshotCount) snapshot(s), \(layerCount) layer(s), "
            + "\(mappingRowCount) mapping row(s) checked: \(errorCount) error(s), \(noteCount) note(s)")
        return lines
    }
}

/// One problem (or note) of a kind, about one thing: a pool, an image, a
/// pair of images, a layer, a reservation.
public struct MetadataFinding: Codable, Sendable, Equatable {
    public enum Severity: String, Codable, Sendable {
        /// Wrong: the engine would refuse to start, serve the wrong data,
        /// or count space wrongly; or rows no transaction of the engine
        /// leaves behind, not even when killed.
        case error
        /// A state a crash may legitimately leave, which the engine
        /// repairs when it starts.
        case note
    }

    /// Stable codes, for scripts and tests.
    public enum Kind: String, Codable, Sendable {
        /// A stored value the readers cannot take (a negative size, an unknown kind).
        case badValue = "bad-value"
        case chunkSize = "chunk-size"
        /// Segments do not follow each other from chunk 0.
        case segmentGap = "segment-gap"
        /// A segment names a supplier the pool does not have.
        case segmentSupplier = "segment-supplier"
        /// A segment reaches past its supplier's recorded size.
        case segmentPastSupplier = "segment-past-supplier"
        /// Two segments use the same bytes of a supplier.
        case segmentOverlap = "segment-overlap"
        /// Notes: a pool from before segments were stored; the engine lays
        /// its suppliers out one after another and records that at start.
        case segmentsMissing = "segments-missing"
        case supplierMissing = "supplier-missing"
        case supplierUnreadable = "supplier-unreadable"
        /// The file or device is smaller than its recorded size.
        case supplierShort = "supplier-short"
        /// Two suppliers (of one pool or two) are the same file.
        case supplierShared = "supplier-shared"
        /// A volume, snapshot or dirty chunk names a pool that does not exist.
        case poolMissing = "pool-missing"
        /// An image larger than the largest volume remap makes.
        case imageSize = "image-size"
        case layerCycle = "layer-cycle"
        /// An image's layer chain does not lead where it must (a volume to
        /// its own first layer, a snapshot to its volume's tree, a clone to
        /// its snapshot's): a layer row is missing.
        case layerMissing = "layer-missing"
        /// A volume writes to a layer another image reads or that has
        /// layers above it: they would see its writes.
        case layerShared = "layer-shared"
        /// Images of one layer tree (which share chunks) in different pools.
        case treeSpansPools = "tree-spans-pools"
        /// A `layers` row no image reaches.
        case leakedLayer = "leaked-layer"
        /// Mapping rows in a layer no image reaches.
        case leakedRows = "leaked-rows"
        /// A mapped physical chunk past the pool's capacity.
        case chunkBeyondCapacity = "chunk-beyond-capacity"
        /// A physical chunk mapped by images of different trees, or at
        /// different virtual chunks.
        case chunkConflict = "chunk-conflict"
        /// A reservation of a volume that does not exist, or a copy-on-write
        /// one whose range reservation does not.
        case reservationOrphan = "reservation-orphan"
        /// A pooled reservation with more left than it holds (a
        /// copy-on-write one: than its range reservation covers).
        case reservationOverdrawn = "reservation-overdrawn"
        /// A range reservation reaching past its volume's end.
        case reservationRange = "reservation-range"
        /// Notes: a reserved-unwritten mark no live range reservation of
        /// the owning volume covers; the engine clears it at start (the
        /// chunk then counts as written data).
        case unwrittenOrphan = "unwritten-orphan"
        /// An export of a volume or reservation that does not exist.
        case exportOrphan = "export-orphan"
        case dirtyBeyondCapacity = "dirty-beyond-capacity"
        /// Mapped chunks and pooled reservations need more than the capacity.
        case overcommitted

        public var severity: Severity {
            switch self {
            case .segmentsMissing, .unwrittenOrphan: return .note
            default: return .error
            }
        }
    }

    public var severity: Severity
    public var kind: Kind
    public var detail: String
    /// How many chunks, rows or things it covers.
    public var count: UInt64
    /// The first chunks (or layer keys) concerned, as `detail` says, at
    /// most `MetadataFinding.sampleLimit`.
    public var sample: [UInt64]

    public static let sampleLimit = 16

    public init(kind: Kind, detail: String, count: UInt64 = 1, sample: [UInt64] = []) {
        self.severity = kind.severity
        self.kind = kind
        self.detail = detail
        self.count = count
        self.sample = sample
    }

    /// `error chunk-conflict: ... (3: 17, 18, 19)`.
    public var line: String {
        var line = "\(severity.rawValue) \(kind.rawValue): \(detail)"
        if !sample.isEmpty {
            let more = count > UInt64(sample.count) ? ", ..." : ""
            line += " (\(count): \(sample.map(String.init).joined(separator: ", "))\(more))"
        } else if count > 1 {
            line += " (\(count))"
        }
        return line
    }
}
