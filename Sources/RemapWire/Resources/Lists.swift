// The bodies that carry several resources. Each is generic over its
// elements so that remapd encodes its own records and clients decode the
// types of this module under the same member names: the envelope is written
// once for both sides.

/// The body of `GET /v1/pools`.
public struct PoolList<Element: Sendable>: Sendable {
    public var pools: [Element]
    public init(pools: [Element]) { self.pools = pools }
}

/// The body of `GET /v1/volumes`: one page of the list.
public struct VolumeList<Element: Sendable>: Sendable {
    public var volumes: [Element]
    /// Where the next page starts; absent on the last page.
    public var nextPageToken: String?
    public init(volumes: [Element], nextPageToken: String?) {
        self.volumes = volumes
        self.nextPageToken = nextPageToken
    }
}

/// The body of `GET /v1/snapshots` and `GET /v1/volumes/{name}/snapshots`.
public struct SnapshotList<Element: Sendable>: Sendable {
    public var snapshots: [Element]
    public init(snapshots: [Element]) { self.snapshots = snapshots }
}

/// The body of `GET /v1/volumes/{name}/reservations`.
public struct ReservationList<Element: Sendable>: Sendable {
    public var reservations: [Element]
    public init(reservations: [Element]) { self.reservations = reservations }
}

/// The body of `GET /v1/exports`.
public struct ExportList<Element: Sendable>: Sendable {
    public var exports: [Element]
    public init(exports: [Element]) { self.exports = exports }
}

/// The body of `GET /v1/operations`.
public struct OperationList<Element: Sendable>: Sendable {
    public var operations: [Element]
    public init(operations: [Element]) { self.operations = operations }
}

/// The body of `GET /v1/events?since=SEQ`.
public struct EventList<Element: Sendable>: Sendable {
    public var events: [Element]
    /// The newest event's number; `since` this to see only what follows.
    public var lastSeq: Int?
    public init(events: [Element], lastSeq: Int?) {
        self.events = events
        self.lastSeq = lastSeq
    }
}

/// remapd's `202 Accepted` answer to an import (`POST /v1/volumes` with a
/// `source`): the operation to follow and the volume, which exists at once
/// but is busy until the import ends.
public struct VolumeImport<Operation: Sendable, Volume: Sendable>: Sendable {
    public var operation: Operation
    public var volume: Volume
    public init(operation: Operation, volume: Volume) {
        self.operation = operation
        self.volume = volume
    }
}

extension PoolList: Encodable where Element: Encodable {}
extension PoolList: Decodable where Element: Decodable {}
extension VolumeList: Encodable where Element: Encodable {}
extension VolumeList: Decodable where Element: Decodable {}
extension SnapshotList: Encodable where Element: Encodable {}
extension SnapshotList: Decodable where Element: Decodable {}
extension ReservationList: Encodable where Element: Encodable {}
extension ReservationList: Decodable where Element: Decodable {}
extension ExportList: Encodable where Element: Encodable {}
extension ExportList: Decodable where Element: Decodable {}
extension OperationList: Encodable where Element: Encodable {}
extension OperationList: Decodable where Element: Decodable {}
extension EventList: Encodable where Element: Encodable {}
extension EventList: Decodable where Element: Decodable {}
extension VolumeImport: Encodable where Operation: Encodable, Volume: Encodable {}
extension VolumeImport: Decodable where Operation: Decodable, Volume: Decodable {}
