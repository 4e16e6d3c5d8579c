/// What the control plane shows of a pool: a copy, safe to pass between threads.
public struct PoolInfo: Codable, Sendable, Equatable {
    public var name: String
    public var chunkSizeBytes: UInt64
    public var capacityBytes: UInt64
    public var allocatedBytes: UInt64
    public var freeBytes: UInt64
    public var suppliers: [SupplierInfo]
}

public struct SupplierInfo: Codable, Sendable, Equatable {
    public var id: String
    public var kind: String
    public var path: String
    public var sizeBytes: UInt64
}

/// What the control plane shows of a volume.
public struct VolumeInfo: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var pool: String
    public var sizeBytes: UInt64
    public var allocatedBytes: UInt64
    public var createdAt: String
    /// The NBD export that serves this volume.
    public var exportName: String
}

/// A request to create a volume.
public struct VolumeSpec: Sendable, Equatable {
    public var name: String
    public var sizeBytes: UInt64
    public var pool: String

    public init(name: String, sizeBytes: UInt64, pool: String) {
        self.name = name
        self.sizeBytes = sizeBytes
        self.pool = pool
    }
}
