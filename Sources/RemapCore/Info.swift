/// What the control plane shows of a pool: a copy, safe to pass between threads.
public struct PoolInfo: Codable, Sendable, Equatable {
    public var name: String
    public var chunkSizeBytes: UInt64
    public var capacityBytes: UInt64
    public var allocatedBytes: UInt64
    /// The unused part of live reservations.
    public var reservedBytes: UInt64
    public var freeBytes: UInt64
    /// Sum of the sizes of the pool's volumes.
    public var provisionedBytes: UInt64
    public var onNoSpace: NoSpacePolicy
    public var lowSpaceThresholds: [Int]
    /// provisionedBytes / capacityBytes; 0 for a pool without capacity.
    public var overcommitRatio: Double
    public var volumeCount: Int
    public var suppliers: [SupplierInfo]
    /// online, degraded (a supplier failed: reads only) or offline (a
    /// supplier was missing at start: no I/O).
    public var state: PoolState
    /// What failed, for people; absent when online.
    public var stateReason: String?
}

public struct SupplierInfo: Codable, Sendable, Equatable {
    public var id: String
    public var kind: String
    public var path: String
    public var sizeBytes: UInt64
    public var preallocated: Bool
    /// "ok", "failed" or "missing".
    public var state: String
    /// What failed; absent when ok.
    public var error: String?
}

/// What the control plane shows of a volume.
public struct VolumeInfo: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var pool: String
    public var sizeBytes: UInt64
    public var allocatedBytes: UInt64
    /// The unused part of the volume's reservations.
    public var reservedBytes: UInt64
    /// Bytes that can be written now without drawing on free space.
    public var guaranteedWritableBytes: UInt64
    public var createdAt: String
    /// The NBD export that serves this volume.
    public var exportName: String
    public var labels: [String: String]
    /// For a clone: the snapshot it was made from.
    public var originSnapshot: String?
}

/// A request to create a volume.
public struct VolumeSpec: Sendable, Equatable {
    public var name: String
    public var sizeBytes: UInt64
    public var pool: String
    public var labels: [String: String]
    public var reservation: VolumeReservation

    public init(name: String, sizeBytes: UInt64, pool: String, labels: [String: String] = [:],
                reservation: VolumeReservation = .none) {
        self.name = name
        self.sizeBytes = sizeBytes
        self.pool = pool
        self.labels = labels
        self.reservation = reservation
    }
}

/// The reservation a volume is created with.
public enum VolumeReservation: Sendable, Equatable {
    case none
    /// The whole volume backed now (a range reservation that follows its size).
    case thick
    /// A pooled reservation every write to the volume draws on.
    case bytes(UInt64)
}

/// A change to a volume: new size and/or a new set of labels.
public struct VolumePatch: Sendable, Equatable {
    public var sizeBytes: UInt64?
    public var labels: [String: String]?
    /// Shrinking unmaps data past the new end: only when asked for.
    public var allowShrink: Bool

    public init(sizeBytes: UInt64?, labels: [String: String]?, allowShrink: Bool) {
        self.sizeBytes = sizeBytes
        self.labels = labels
        self.allowShrink = allowShrink
    }
}

/// A request to create a pool.
public struct PoolSpec: Sendable, Equatable {
    public var name: String
    public var chunkSize: UInt64
    public var suppliers: [SupplierSpec]

    public init(name: String, chunkSize: UInt64, suppliers: [SupplierSpec]) {
        self.name = name
        self.chunkSize = chunkSize
        self.suppliers = suppliers
    }
}

/// What a new supplier should be.
public enum SupplierSpec: Sendable, Equatable {
    /// A file remap creates, of `sizeBytes`, allocated on the host when `preallocate`.
    case file(path: String, sizeBytes: UInt64, preallocate: Bool)
    /// An existing block device, used whole.
    case block(path: String)

    public var path: String {
        switch self {
        case .file(let path, _, _), .block(let path): return path
        }
    }

    /// The size asked for; nil for a block device (known once it is open).
    public var sizeBytes: UInt64? {
        switch self {
        case .file(_, let size, _): return size
        case .block: return nil
        }
    }

    /// Whether `supplier` is what this spec asked for.
    public func describes(_ supplier: Supplier) -> Bool {
        switch self {
        case .file(let path, let size, let preallocate):
            return supplier.kind == .file && supplier.path == path && supplier.sizeBytes == size
                && (supplier.preallocated || !preallocate)
        case .block(let path):
            return supplier.kind == .block && supplier.path == path
        }
    }
}

/// What the control plane shows of an NBD export.
public struct ExportInfo: Codable, Sendable, Equatable {
    public var name: String
    public var volume: String
    public var reservation: String?

    public init(name: String, volume: String, reservation: String?) {
        self.name = name
        self.volume = volume
        self.reservation = reservation
    }
}
