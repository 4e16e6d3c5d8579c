import Foundation
import RemapCore
import RemapWire
import Synchronization

/// The routes of snapshots, clones, imports and the pool check.
extension Router {
    func snapshotRoute(_ request: HTTPRequest, _ path: [String], _ route: inout String) throws(Problem) -> HTTPResponse? {
        switch (path.count, path[0]) {
        case (3, "volumes") where path[2] == "snapshots":
            route = "/v1/volumes/{name}/snapshots"
            try allow(request, ["GET", "POST"])
            try noQuery(request)
            if request.method == "GET" {
                let list = try answer { () throws(RemapError) in try control.snapshotInfos(volume: path[1]) }
                return Self.json(200, SnapshotList(snapshots: list))
            }
            let name = try RequestBodies.snapshotName(request)
            let (snapshot, created) = try answer { () throws(RemapError) in try control.createSnapshot(volume: path[1], snapshot: name) }
            return Self.json(created ? 201 : 200, snapshot)
        case (3, "volumes") where path[2] == "revert":
            route = "/v1/volumes/{name}/revert"
            try allow(request, ["POST"])
            try noQuery(request)
            let snapshot = try RequestBodies.revertSpec(request)
            return Self.json(200, try answer { () throws(RemapError) in try control.revertVolume(path[1], to: snapshot) })
        case (1, "snapshots"):
            route = "/v1/snapshots"
            try allow(request, ["GET"])
            let query = try QueryParameters(request.query, allowed: ["volume"])
            let list = try answer { () throws(RemapError) in try control.snapshotInfos(volume: query.value("volume")) }
            return Self.json(200, SnapshotList(snapshots: list))
        case (2, "snapshots"):
            route = "/v1/snapshots/{id}"
            try allow(request, ["GET", "DELETE"])
            try noQuery(request)
            if request.method == "GET" {
                return Self.json(200, try answer { () throws(RemapError) in try control.snapshotInfo(path[1]) })
            }
            try answer { () throws(RemapError) in try control.deleteSnapshot(path[1]) }
            return .noContent()
        case (3, "snapshots") where path[2] == "clone":
            route = "/v1/snapshots/{id}/clone"
            try allow(request, ["POST"])
            try noQuery(request)
            let (name, labels) = try RequestBodies.cloneSpec(request)
            let (volume, created) = try answer { () throws(RemapError) in try control.cloneSnapshot(path[1], name: name, labels: labels) }
            return Self.json(created ? 201 : 200, volume)
        case (3, "snapshots") where path[2] == "changes":
            route = "/v1/snapshots/{id}/changes"
            try allow(request, ["GET"])
            let query = try QueryParameters(request.query, allowed: ["base"])
            return Self.json(200, try answer { () throws(RemapError) in try control.snapshotChanges(path[1], base: query.value("base")) })
        case (3, "snapshots") where path[2] == "content":
            route = "/v1/snapshots/{id}/content"
            try allow(request, ["GET"])
            try noQuery(request)
            return try content(request, snapshot: path[1])
        case (1, "operations"):
            route = "/v1/operations"
            try allow(request, ["GET"])
            try noQuery(request)
            return Self.json(200, OperationList(operations: control.operationInfos().map(OperationBody.init)))
        case (2, "operations"):
            route = "/v1/operations/{id}"
            try allow(request, ["GET", "DELETE"])
            try noQuery(request)
            if request.method == "DELETE" {
                let ended = try answer { () throws(RemapError) in try control.cancelOperation(path[1]) }
                return ended.map { Self.json(200, OperationBody($0)) } ?? .noContent()
            }
            return Self.json(200, OperationBody(try answer { () throws(RemapError) in try control.operationInfo(path[1]) }))
        case (3, "pools") where path[2] == "check":
            route = "/v1/pools/{name}/check"
            try allow(request, ["GET"])
            try noQuery(request)
            return Self.json(200, try answer { () throws(RemapError) in try control.checkPool(named: path[1]) })
        default:
            return nil
        }
    }

    /// `POST /v1/volumes` with `"source": {"file": PATH}`: 202 and the operation.
    func importVolume(_ spec: VolumeSpec, sizeGiven: Bool, from path: String) throws(Problem) -> HTTPResponse {
        let (operation, volume) = try answer { () throws(RemapError) in
            try control.importVolume(spec, sizeGiven: sizeGiven, from: path)
        }
        var response = Self.json(202, VolumeImport(operation: OperationBody(operation), volume: volume))
        response.headers.append(("Location", "/v1/operations/\(operation.id)"))
        return response
    }

    /// The raw image, whole or one byte range of it (RFC 9110 §14).
    private func content(_ request: HTTPRequest, snapshot: String) throws(Problem) -> HTTPResponse {
        let (id, size) = try answer { () throws(RemapError) in try control.beginSnapshotRead(snapshot) }
        var start: UInt64 = 0
        var end = size  // exclusive
        var status = 200
        if let header = request.range {
            switch ByteRangeRequest.parse(header, size: size) {
            case .whole: break
            case .range(let first, let last):
                (start, end, status) = (first, last + 1, 206)
            case .unsatisfiable:
                control.endSnapshotRead(id)
                var response = Self.problem(Problem(.rangeNotSatisfiable,
                                                    detail: "range '\(header)' lies outside the \(size)-byte image"))
                response.headers.append(("Content-Range", "bytes */\(size)"))
                return response
            }
        }
        var response = HTTPResponse(status: status, contentType: "application/octet-stream", body: [])
        response.headers = [("Accept-Ranges", "bytes")]
        if status == 206 { response.headers.append(("Content-Range", "bytes \(start)-\(end - 1)/\(size)")) }
        response.stream = ContentStream(control: control, id: id, start: start, end: end)
        return response
    }
}

/// What a Range header asks for.
enum ByteRangeRequest: Equatable {
    case whole
    /// First and last byte, inclusive.
    case range(UInt64, UInt64)
    case unsatisfiable

    /// One `bytes=` range; anything else (several ranges, another unit,
    /// bad syntax) is ignored, as RFC 9110 allows, and gets the whole image.
    static func parse(_ header: String, size: UInt64) -> ByteRangeRequest {
        let text = header.trimmingCharacters(in: .whitespaces)
        guard text.hasPrefix("bytes="), !text.contains(",") else { return .whole }
        let spec = text.dropFirst(6)
        guard let dash = spec.firstIndex(of: "-") else { return .whole }
        let first = spec[..<dash].trimmingCharacters(in: .whitespaces)
        let last = spec[spec.index(after: dash)...].trimmingCharacters(in: .whitespaces)
        if first.isEmpty {
            guard let suffix = UInt64(last) else { return .whole }
            guard suffix > 0, size > 0 else { return .unsatisfiable }
            return .range(size - min(suffix, size), size - 1)
        }
        guard let from = UInt64(first) else { return .whole }
        guard from < size else { return .unsatisfiable }
        if last.isEmpty { return .range(from, size - 1) }
        guard let to = UInt64(last), to >= from else { return .whole }
        return .range(from, min(to, size - 1))
    }
}

/// Streams a pinned snapshot's bytes `start..<end` from the engine.
final class ContentStream: ResponseStream, @unchecked Sendable {  // read by one connection thread at a time; `ended` is atomic
    private let control: any ControlPlane
    private let id: String
    private var position: UInt64
    private let stop: UInt64
    private let ended = Atomic<Bool>(false)

    init(control: any ControlPlane, id: String, start: UInt64, end: UInt64) {
        self.control = control
        self.id = id
        self.position = start
        self.stop = end
        self.length = end - start
    }

    let length: UInt64?

    func read(into buffer: UnsafeMutableRawPointer, maximum: Int) -> Int? {
        guard position < stop, !isEnded else { return nil }
        let count = Int(min(UInt64(maximum), stop - position, 1 << 20))
        do {
            try control.readSnapshot(id, offset: position, length: count, into: buffer)
        } catch {
            return nil
        }
        position += UInt64(count)
        return count
    }

    func end() {
        if !ended.exchange(true, ordering: .relaxed) { control.endSnapshotRead(id) }
    }

    var isEnded: Bool { ended.load(ordering: .relaxed) }
}

/// An operation as JSON: its fields, and `error` as a problem object when it failed.
struct OperationBody: Encodable {
    let info: OperationInfo
    init(_ info: OperationInfo) { self.info = info }

    private enum Key: String, CodingKey { case error }

    func encode(to encoder: any Encoder) throws {
        try info.encode(to: encoder)
        if let failure = info.failure {
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(Problem(failure), forKey: .error)
        }
    }
}
