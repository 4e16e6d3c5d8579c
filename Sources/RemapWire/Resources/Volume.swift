/// A volume as the API describes it.
public struct Volume: Decodable, Equatable, Sendable {
    public var id: String
    public var name: String
    /// The name of the pool the volume draws its chunks from.
    public var pool: String
    /// The size the volume presents to its users.
    public var sizeBytes: Int
    /// How much of the pool the volume actually holds; grows as it is written.
    public var allocatedBytes: Int
    /// When the volume was created, as RFC 3339 text; shown as received.
    public var createdAt: String
    /// The name under which the NBD server exports the volume.
    public var exportName: String
    /// The user's key/value labels.
    public var labels: [String: String]
    /// The unused part of the volume's reservations; absent from daemons
    /// that predate reservations.
    public var reservedBytes: Int?
    /// How much of the volume can be written now without drawing on the
    /// pool's free space.
    public var guaranteedWritableBytes: Int?
    /// For a clone, the ID of the snapshot it was made from.
    public var originSnapshot: String?

    private enum CodingKeys: String, CodingKey {
        case id, name, pool, sizeBytes, allocatedBytes, createdAt, exportName, labels
        case reservedBytes, guaranteedWritableBytes, originSnapshot
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        name = try container.decode(String.self, forKey: .name)
        pool = try container.decode(String.self, forKey: .pool)
        sizeBytes = try container.decode(Int.self, forKey: .sizeBytes)
        allocatedBytes = try container.decode(Int.self, forKey: .allocatedBytes)
        createdAt = try container.decode(String.self, forKey: .createdAt)
        exportName = try container.decode(String.self, forKey: .exportName)
        // A volume without labels may come without the member; both mean none.
        labels = try container.decodeIfPresent([String: String].self, forKey: .labels) ?? [:]
        reservedBytes = try container.decodeIfPresent(Int.self, forKey: .reservedBytes)
        guaranteedWritableBytes = try container.decodeIfPresent(Int.self, forKey: .guaranteedWritableBytes)
        originSnapshot = try container.decodeIfPresent(String.self, forKey: .originSnapshot)
    }
}
