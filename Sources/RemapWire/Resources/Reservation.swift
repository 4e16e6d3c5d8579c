/// A promise of space for one volume, named by an opaque cookie (``id``):
/// writes it covers never fail for lack of space.
public struct Reservation: Decodable, Equatable, Sendable {
    public var id: String
    public var volume: String
    /// The holder's name for it; remapd names `thick` and `default` ones.
    public var name: String?
    /// `pooled` (bytes set aside in the pool) or `range` (every chunk of
    /// ``offsetBytes``..<``offsetBytes``+``lengthBytes`` backed now).
    public var kind: String
    /// The space promised, rounded up to whole chunks.
    public var bytes: Int
    /// How much of ``bytes`` writes have drawn on.
    public var usedBytes: Int
    /// Set only for leases; RFC 3339 text, shown as received.
    public var expiresAt: String?
    public var offsetBytes: Int?
    public var lengthBytes: Int?
    /// A lease's length, which a renewal without a new TTL grants again.
    public var ttlSeconds: Int?
}
