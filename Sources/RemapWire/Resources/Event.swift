/// Something remapd reports about space: a pool crossing a low-space
/// threshold or running out, a reservation lapsing or being released, a
/// pool growing.
public struct Event: Decodable, Equatable, Sendable {
    /// Increases by one per event; `since` and `Last-Event-ID` resume
    /// after it.
    public var seq: Int
    /// RFC 3339 text, shown as received.
    public var time: String
    /// `pool.low-space`, `pool.no-space`, `reservation.expired`,
    /// `reservation.released`, `pool.grown`, …, or a type newer than this
    /// client.
    public var type: String
    public var pool: String?
    public var volume: String?
    public var reservation: String?
    public var offsetBytes: Int?
    public var percent: Double?
    public var detail: String?
}
