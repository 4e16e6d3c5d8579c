import RemapWire

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

/// The body of `POST /v1/volumes` that imports a file into a new volume.
struct VolumeImportSpec: Encodable, Sendable {
    /// Where the data comes from.
    struct Source: Encodable, Sendable {
        /// An absolute path on the daemon's host, under its supplier directory.
        var file: String
    }

    var name: String
    var source: Source
    /// The server picks "default" when omitted.
    var pool: String?
    /// The server takes the file's size, rounded up to 512, when omitted.
    var sizeBytes: Int?
    /// Left out when empty.
    var labels: Labels?
}
