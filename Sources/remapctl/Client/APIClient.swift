import class Foundation.JSONDecoder
import class Foundation.JSONEncoder
import struct Foundation.Data
import RemapWire

/// Typed calls to remapd's REST API (v1).
///
/// Each call is one request on a fresh connection. Error statuses come back
/// as ``ClientError/problem(_:httpStatus:reason:)``; a body that does not
/// match the API's shape as ``ClientError/unexpectedBody(path:reason:)``.
struct APIClient: Sendable {
    let connection: HTTPConnection
    /// Sent as a bearer token on every request when set.
    let bearerToken: String?

    /// A decoded response together with its status and raw body; `--json`
    /// prints the raw body so users see exactly what the daemon said.
    struct Reply<Value: Sendable>: Sendable {
        var status: Int
        var value: Value
        var body: [UInt8]
    }

    func health() throws(ClientError) -> Reply<Health> {
        try get("/v1/health")
    }

    func version() throws(ClientError) -> Reply<ServerVersion> {
        try get("/v1/version")
    }

    /// The daemon's metrics in Prometheus text format, as sent.
    func metrics() throws(ClientError) -> Reply<String> {
        let response = try perform(HTTPRequest(method: "GET", path: "/metrics", accept: "text/plain"))
        return Reply(status: response.status, value: String(decoding: response.body, as: UTF8.self), body: response.body)
    }

    // MARK: Pools

    func pools() throws(ClientError) -> Reply<PoolList<Pool>> {
        try get("/v1/pools")
    }

    func pool(named name: String) throws(ClientError) -> Reply<Pool> {
        try get(Self.poolPath(name))
    }

    /// Creates a pool. The reply's status tells the outcome: 201 for a new
    /// pool, 200 when an identical one already existed.
    func createPool(_ spec: PoolSpec) throws(ClientError) -> Reply<Pool> {
        try send("POST", "/v1/pools", spec)
    }

    /// Deletes a pool that has no volumes; remapd answers 204 with no body.
    func deletePool(named name: String) throws(ClientError) {
        _ = try perform(HTTPRequest(method: "DELETE", path: Self.poolPath(name)))
    }

    /// Checks a degraded or offline pool's suppliers again; the reply is the
    /// pool, online again (or a `supplier-failed` problem).
    func clearPoolErrors(named name: String) throws(ClientError) -> Reply<Pool> {
        try decode(perform(HTTPRequest(method: "POST", path: Self.poolPath(name) + "/clear-errors")),
                   path: Self.poolPath(name) + "/clear-errors")
    }

    /// Adds a supplier to a pool; the reply is the pool with its new capacity.
    func addSupplier(_ spec: SupplierSpec, toPool name: String) throws(ClientError) -> Reply<Pool> {
        try send("POST", Self.poolPath(name) + "/suppliers", spec)
    }

    // MARK: Volumes

    /// One page of the volume list; follow ``VolumeList/nextPageToken`` for
    /// the rest.
    func volumes(_ query: VolumeQuery = VolumeQuery()) throws(ClientError) -> Reply<VolumeList<Volume>> {
        try get(QueryString.target("/v1/volumes", query.items))
    }

    func volume(named name: String) throws(ClientError) -> Reply<Volume> {
        try get(Self.volumePath(name))
    }

    /// Creates a volume. The reply's status tells the outcome: 201 for a new
    /// volume, 200 when one with the same spec already existed.
    func createVolume(_ spec: VolumeSpec) throws(ClientError) -> Reply<Volume> {
        try send("POST", "/v1/volumes", spec)
    }

    /// Changes a volume's size or labels. A smaller size is refused with
    /// `shrink-not-allowed` unless `allowShrink` is set.
    func updateVolume(named name: String, _ update: VolumeUpdate, allowShrink: Bool = false) throws(ClientError) -> Reply<Volume> {
        let query = allowShrink ? [(name: "allowShrink", value: "true")] : []
        return try send("PATCH", QueryString.target(Self.volumePath(name), query), update)
    }

    /// Deletes a volume; remapd answers 204 with no body.
    func deleteVolume(named name: String) throws(ClientError) {
        _ = try perform(HTTPRequest(method: "DELETE", path: Self.volumePath(name)))
    }

    /// Changes a pool's space settings; the reply is the whole pool.
    func updatePool(named name: String, _ update: PoolUpdate) throws(ClientError) -> Reply<Pool> {
        try send("PATCH", Self.poolPath(name), update)
    }

    /// Grows a file supplier to `sizeBytes`; the new space is usable at once.
    func resizeSupplier(
        _ id: String, ofPool name: String, to sizeBytes: Int
    ) throws(ClientError) -> Reply<Pool> {
        try send(
            "PATCH", Self.poolPath(name) + "/suppliers/" + PathComponent.encode(id),
            SupplierResize(sizeBytes: sizeBytes))
    }

    // MARK: Reservations

    func reservations(ofVolume volume: String) throws(ClientError) -> Reply<ReservationList<Reservation>> {
        try get(Self.volumePath(volume) + "/reservations")
    }

    func reservation(_ id: String, ofVolume volume: String) throws(ClientError) -> Reply<Reservation> {
        try get(Self.reservationPath(id, volume))
    }

    /// Reserves space for a volume. The reply's status tells the outcome:
    /// 201 for a new reservation, 200 when one of that name and spec
    /// existed; 507 `insufficient-space` is decided at once.
    func createReservation(
        _ spec: ReservationSpec, forVolume volume: String
    ) throws(ClientError) -> Reply<Reservation> {
        try send("POST", Self.volumePath(volume) + "/reservations", spec)
    }

    /// Extends a lease by `ttlSeconds` from now, or by its original TTL.
    func renewReservation(
        _ id: String, ofVolume volume: String, ttlSeconds: Int?
    ) throws(ClientError) -> Reply<Reservation> {
        try send("POST", Self.reservationPath(id, volume) + "/renew", ReservationRenewal(ttlSeconds: ttlSeconds))
    }

    /// Releases a reservation; remapd answers 204 with no body. What was not
    /// used returns to the pool once in-flight writes drawing on it finish.
    func deleteReservation(_ id: String, ofVolume volume: String) throws(ClientError) {
        _ = try perform(HTTPRequest(method: "DELETE", path: Self.reservationPath(id, volume)))
    }

    // MARK: Exports

    func exports() throws(ClientError) -> Reply<ExportList<Export>> {
        try get("/v1/exports")
    }

    /// Adds an NBD export of a volume; always 201.
    func createExport(_ spec: ExportSpec) throws(ClientError) -> Reply<Export> {
        try send("POST", "/v1/exports", spec)
    }

    /// Removes an extra export; remapd answers 204 with no body.
    func deleteExport(named name: String) throws(ClientError) {
        _ = try perform(HTTPRequest(method: "DELETE", path: "/v1/exports/" + PathComponent.encode(name)))
    }

    // MARK: Events

    /// The events after `since` (up to 1000), oldest first; all that remapd
    /// keeps when `since` is `nil`.
    func events(since: Int?) throws(ClientError) -> Reply<EventList<Event>> {
        try get(QueryString.target("/v1/events", since.map { [(name: "since", value: String($0))] } ?? []))
    }

    // MARK: Snapshots

    /// Every snapshot, or those of the volume named `volume` (404 when there
    /// is no such volume); a volume's are oldest first.
    func snapshots(ofVolume volume: String? = nil) throws(ClientError) -> Reply<SnapshotList<Snapshot>> {
        guard let volume else { return try get("/v1/snapshots") }
        return try get(Self.volumePath(volume) + "/snapshots")
    }

    /// A snapshot by ID or as `VOLUME@NAME`.
    func snapshot(_ snapshot: String) throws(ClientError) -> Reply<Snapshot> {
        try get(Self.snapshotPath(snapshot))
    }

    /// Takes a snapshot of a volume. The reply's status tells the outcome:
    /// 201 for a new snapshot, 200 when the volume has one of that name.
    func createSnapshot(named name: String, ofVolume volume: String) throws(ClientError) -> Reply<Snapshot> {
        try send("POST", Self.volumePath(volume) + "/snapshots", SnapshotSpec(name: name))
    }

    /// Deletes a snapshot; remapd answers 204 with no body.
    func deleteSnapshot(_ snapshot: String) throws(ClientError) {
        _ = try perform(HTTPRequest(method: "DELETE", path: Self.snapshotPath(snapshot)))
    }

    /// Makes a writable volume from a snapshot. The reply's status tells the
    /// outcome: 201 for a new volume, 200 when the volume already is a clone
    /// of that snapshot.
    func cloneSnapshot(_ snapshot: String, _ spec: CloneSpec) throws(ClientError) -> Reply<Volume> {
        try send("POST", Self.snapshotPath(snapshot) + "/clone", spec)
    }

    /// Makes a volume read what one of its snapshots reads.
    func revertVolume(named name: String, to snapshot: String) throws(ClientError) -> Reply<Volume> {
        try send("POST", Self.volumePath(name) + "/revert", RevertSpec(snapshot: snapshot))
    }

    /// The ranges where `snapshot` may differ from `base`, or without a base
    /// the ranges that hold data.
    func snapshotChanges(_ snapshot: String, base: String? = nil) throws(ClientError) -> Reply<SnapshotChanges> {
        let query = base.map { [(name: "base", value: $0)] } ?? []
        return try get(QueryString.target(Self.snapshotPath(snapshot) + "/changes", query))
    }

    /// Starts reading `range` of a snapshot's content (a `Range: bytes=`
    /// request); the caller reads the body from the stream and checks the
    /// head (206 and its `Content-Range`).
    ///
    /// - Parameter bodyTimeoutSeconds: How long each wait for body bytes may take.
    func snapshotContent(
        _ snapshot: String, range: Range<Int>, bodyTimeoutSeconds: Int
    ) throws(ClientError) -> HTTPStream {
        var request = HTTPRequest(
            method: "GET", path: Self.snapshotPath(snapshot) + "/content", accept: "application/octet-stream")
        request.extraHeaders.append((name: "Range", value: "bytes=\(range.lowerBound)-\(range.upperBound - 1)"))
        return try stream(request, bodyTimeoutSeconds: bodyTimeoutSeconds)
    }

    /// Sends `request` with the token attached and reads the response head;
    /// the body is the caller's to read as it arrives. An error status is
    /// thrown as its problem, the body read first.
    ///
    /// - Parameter bodyTimeoutSeconds: How long each wait for body bytes may
    ///   take; `nil` waits for ever.
    func stream(_ request: HTTPRequest, bodyTimeoutSeconds: Int?) throws(ClientError) -> HTTPStream {
        var request = request
        request.bearerToken = bearerToken
        var stream = try connection.open(request)
        guard stream.head.isSuccess else {
            var response = stream.head
            response.body = try stream.remainingBody()
            throw Self.failure(response)
        }
        try stream.setBodyTimeout(bodyTimeoutSeconds)
        return stream
    }

    // MARK: Imports and operations

    /// Creates a volume from a file on the daemon's host. remapd answers
    /// 202 at once; the import runs as the returned operation.
    func importVolume(_ spec: VolumeImportSpec) throws(ClientError) -> Reply<VolumeImport<Operation, Volume>> {
        try send("POST", "/v1/volumes", spec)
    }

    /// Every operation remapd remembers, newest first.
    func operations() throws(ClientError) -> Reply<OperationList<Operation>> {
        try get("/v1/operations")
    }

    func operation(_ id: String) throws(ClientError) -> Reply<Operation> {
        try get("/v1/operations/" + PathComponent.encode(id))
    }

    /// Cancels a running operation (the answer is how it ended) or forgets
    /// a finished one (204: nil).
    func cancelOperation(_ id: String) throws(ClientError) -> Reply<Operation>? {
        let path = "/v1/operations/" + PathComponent.encode(id)
        let response = try perform(HTTPRequest(method: "DELETE", path: path))
        if response.status == 204 { return nil }
        return try decode(response, path: path)
    }

    private static func reservationPath(_ id: String, _ volume: String) -> String {
        volumePath(volume) + "/reservations/" + PathComponent.encode(id)
    }

    private static func poolPath(_ name: String) -> String {
        "/v1/pools/\(PathComponent.encode(name))"
    }

    private static func volumePath(_ name: String) -> String {
        "/v1/volumes/\(PathComponent.encode(name))"
    }

    /// `/v1/snapshots/{id}` for an ID or `VOLUME@NAME` (its `@` encoded).
    private static func snapshotPath(_ snapshot: String) -> String {
        "/v1/snapshots/\(PathComponent.encode(snapshot))"
    }

    // MARK: - Plumbing

    private func get<Value: Decodable>(_ path: String) throws(ClientError) -> Reply<Value> {
        try decode(perform(HTTPRequest(method: "GET", path: path)), path: path)
    }

    private func send<Body: Encodable, Value: Decodable>(
        _ method: String, _ path: String, _ body: Body
    ) throws(ClientError) -> Reply<Value> {
        let encoded: [UInt8]
        do {
            encoded = Array(try JSONEncoder().encode(body))
        } catch {
            // remapctl's request bodies are strings, integers, booleans and
            // string dictionaries, which always encode.
            preconditionFailure("cannot encode the body of \(method) \(path): \(error)")
        }
        return try decode(perform(HTTPRequest(method: method, path: path, body: encoded)), path: path)
    }

    /// Sends the request with the token attached and turns error statuses
    /// into thrown problems.
    private func perform(_ request: HTTPRequest) throws(ClientError) -> HTTPResponse {
        var request = request
        request.bearerToken = bearerToken
        let response = try connection.send(request)
        guard response.isSuccess else { throw Self.failure(response) }
        return response
    }

    private func decode<Value: Decodable>(_ response: HTTPResponse, path: String) throws(ClientError) -> Reply<Value> {
        do {
            let value = try JSONDecoder().decode(Value.self, from: Data(response.body))
            return Reply(status: response.status, value: value, body: response.body)
        } catch let error as DecodingError {
            throw .unexpectedBody(path: path, reason: Self.explain(error))
        } catch {
            throw .unexpectedBody(path: path, reason: String(describing: error))
        }
    }

    /// An error response as thrown: its problem document. A body that is not
    /// one (say, a proxy's plain-text page) still lends its first line as
    /// detail.
    private static func failure(_ response: HTTPResponse) -> ClientError {
        let problem = (try? JSONDecoder().decode(Problem.self, from: Data(response.body)))
            ?? Problem(plainText: response.body)
        return .problem(problem, httpStatus: response.status, reason: response.reason)
    }

    /// A short account of why a body did not decode, naming the field.
    private static func explain(_ error: DecodingError) -> String {
        func field(_ path: [any CodingKey]) -> String {
            path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "missing field '\(field(context.codingPath + [key]))'"
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "field '\(field(context.codingPath))' has the wrong type"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "the body is not valid JSON" : "field '\(field(context.codingPath))' is invalid"
        @unknown default:
            return "the body does not match the API"
        }
    }
}
