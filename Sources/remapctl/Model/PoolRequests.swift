import RemapWire

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
