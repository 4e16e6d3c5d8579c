/// Something that happened to space, for `GET /v1/events`.
public struct Event: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case poolLowSpace = "pool.low-space"
        case poolNoSpace = "pool.no-space"
        case poolGrown = "pool.grown"
        /// A supplier failed: the pool serves reads only.
        case poolDegraded = "pool.degraded"
        /// A supplier was missing or unusable at start: the pool serves nothing.
        case poolOffline = "pool.offline"
        /// An operator cleared the pool's errors: it serves again.
        case poolOnline = "pool.online"
        case reservationExpired = "reservation.expired"
        case reservationReleased = "reservation.released"
        case snapshotCreated = "snapshot.created"
        case snapshotDeleted = "snapshot.deleted"
        case volumeReverted = "volume.reverted"
        case importFinished = "import.finished"
    }

    /// Increases by one per event, from 1; `since` and `Last-Event-ID` use it.
    public var seq: UInt64
    public var time: String
    public var type: Kind
    public var pool: String?
    public var volume: String?
    public var reservation: String?
    public var offsetBytes: UInt64?
    public var percent: Int?
    public var detail: String

    public init(seq: UInt64, time: String, type: Kind, pool: String? = nil, volume: String? = nil,
                reservation: String? = nil, offsetBytes: UInt64? = nil, percent: Int? = nil, detail: String) {
        self.seq = seq
        self.time = time
        self.type = type
        self.pool = pool
        self.volume = volume
        self.reservation = reservation
        self.offsetBytes = offsetBytes
        self.percent = percent
        self.detail = detail
    }
}
