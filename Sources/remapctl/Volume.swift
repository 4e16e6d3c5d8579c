import RemapWire
/// A volume as the API describes it.
struct Volume: Decodable, Equatable, Sendable {
    var id: String
    var name: String
    /// The name of the pool the volume draws its chunks from.
    var pool: String
    /// The size the volume presents to its users.
    var sizeBytes: Int
    /// How much of the pool the volume actually holds; grows as it is written.
    var allocatedBytes: Int
    /// When the volume was created, as RFC 3339 text; shown as received.
    var createdAt: String
    /// The name under which the NBD server exports the volume.
    var exportName: String
    /// The user's key/value labels.
    var labels: Labels
    /// The unused part of the volume's reservations; absent from daemons
    /// that predate reservations.
    var reservedBytes: Int?
    /// How much of the volume can be written now without drawing on the
    /// pool's free space.
    var guaranteedWritableBytes: Int?
    /// For a clone, the ID of the snapshot it was made from.
    var originSnapshot: String?

    private enum CodingKeys: String, CodingKey {
        case id, name, pool, sizeBytes, allocatedBytes, createdAt, exportName, labels
        case reservedBytes, guaranteedWritableBytes, originSnapshot
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(String.self, forKey: .id)
        name = try container.decode(String.self, forKey: .name)
        pool = try container.decode(String.self, forKey: .pool)
        sizeBytes = try container.decode(Int.self, forKey: .sizeBytes)
        allocatedBytes = try container.decode(Int.self, forKey: .allocatedBytes)
        createdAt = try container.decode(String.self, forKey: .createdAt)
        exportName = try container.decode(String.self, forKey: .exportName)
        // A volume without labels may come without the member; both mean none.
        labels = try container.decodeIfPresent(Labels.self, forKey: .labels) ?? Labels()
        reservedBytes = try container.decodeIfPresent(Int.self, forKey: .reservedBytes)
        guaranteedWritableBytes = try container.decodeIfPresent(Int.self, forKey: .guaranteedWritableBytes)
        originSnapshot = try container.decodeIfPresent(String.self, forKey: .originSnapshot)
    }
}

/// The body of `POST /v1/volumes`.
struct VolumeSpec: Encodable, Sendable {
    var name: String
    var sizeBytes: Int
    /// The pool to draw from; the server picks "default" when omitted.
    var pool: String?
    /// Left out when empty, so a plain create reads as it always did.
    var labels: Labels?
    /// Left out unless asked for; remapd's default is no reservation.
    var reservation: VolumeReservation?
}

/// The space a new volume is promised: none (thin), all of it (`thick`: a
/// range reservation over the whole volume), or a pooled amount every write
/// to the volume draws on.
///
/// On the wire `"none"`, `"thick"` or `{"bytes": N}`; on the command line
/// `none`, `thick` or a size.
enum VolumeReservation: Encodable, Equatable, Sendable {
    case none
    case thick
    case pooled(bytes: Int)

    private enum CodingKeys: String, CodingKey {
        case bytes
    }

    func encode(to encoder: any Encoder) throws {
        switch self {
        case .none:
            var container = encoder.singleValueContainer()
            try container.encode("none")
        case .thick:
            var container = encoder.singleValueContainer()
            try container.encode("thick")
        case .pooled(let bytes):
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(bytes, forKey: .bytes)
        }
    }

    /// Why a `--reservation` value was refused.
    struct ParseError: Error, CustomStringConvertible {
        let description: String
    }

    /// Parses `none`, `thick`, or a size such as `256M`.
    init(parsing text: String) throws(ParseError) {
        switch text.trimmed.lowercased() {
        case "none":
            self = .none
        case "thick":
            self = .thick
        default:
            do throws(ByteSize.ParseError) {
                self = .pooled(bytes: try ByteSize(parsing: text).bytes)
            } catch {
                throw ParseError(description: "use none, thick or a size (e.g. 256M): \(error)")
            }
        }
    }
}

/// The body of `PATCH /v1/volumes/{name}`: the members to change.
struct VolumeUpdate: Encodable, Sendable {
    var sizeBytes: Int?
    /// Replaces the volume's whole label set.
    var labels: Labels?
}

/// The body of `GET /v1/volumes`: one page of the list.
struct VolumeList: Decodable, Sendable {
    var volumes: [Volume]
    /// Where the next page starts; absent on the last page.
    var nextPageToken: String?
}

/// What `GET /v1/volumes` should return.
struct VolumeQuery: Sendable {
    /// Only volumes of this pool.
    var pool: String?
    /// `key=value` for volumes with that label, or `key` for volumes that
    /// have the key at all.
    var label: String?
    /// The page size, 1–1000; the server's default is 100.
    var limit: Int?
    /// Continue after the page that returned this token.
    var pageToken: String?

    /// The query parameters in a fixed order.
    var items: [(name: String, value: String)] {
        var items: [(name: String, value: String)] = []
        if let pool { items.append(("pool", pool)) }
        if let label { items.append(("label", label)) }
        if let limit { items.append(("limit", String(limit))) }
        if let pageToken { items.append(("pageToken", pageToken)) }
        return items
    }
}
