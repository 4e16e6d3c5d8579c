/// An NBD export: every volume's own one (named like the volume) and the
/// extra ones made with `POST /v1/exports`, whose writes may draw on a
/// pooled reservation.
public struct Export: Decodable, Equatable, Sendable {
    public var name: String
    public var volume: String
    /// The pooled reservation writes through this export draw on first.
    public var reservation: String?
}
