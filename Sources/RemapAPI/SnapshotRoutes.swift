import Foundation
import RemapCore
import RemapWire
import Synchronization

/// The routes of snapshots, clones, imports and the pool check.
extension Router {
    static let snapshotRoutes: [Route] = [
        Route("GET", "/v1/volumes/{name}/snapshots") { router, call throws(Problem) in
            let list = try router.answer { () throws(RemapError) in try router.control.snapshotInfos(volume: call.parameters[0]) }
            return json(200, SnapshotList(snapshots: list))
        },
        Route("POST", "/v1/volumes/{name}/snapshots") { router, call throws(Problem) in
            let name = try RequestBodies.snapshotName(call.request)
            let (snapshot, created) = try router.answer { () throws(RemapError) in
                try router.control.createSnapshot(volume: call.parameters[0], snapshot: name)
            }
            return json(created ? 201 : 200, snapshot)
        },
        Route("POST", "/v1/volumes/{name}/revert") { router, call throws(Problem) in
            let snapshot = try RequestBodies.revertSpec(call.request)
            return json(200, try router.answer { () throws(RemapError) in try router.control.revertVolume(call.parameters[0], to: snapshot) })
        },
        Route("GET", "/v1/snapshots", query: ["volume"]) { router, call throws(Problem) in
            let list = try router.answer { () throws(RemapError) in try router.control.snapshotInfos(volume: call.query.value("volume")) }
            return json(200, SnapshotList(snapshots: list))
        },
        Route("GET", "/v1/snapshots/{id}") { router, call throws(Problem) in
            json(200, try router.answer { () throws(RemapError) in try router.control.snapshotInfo(call.parameters[0]) })
        },
        Route("DELETE", "/v1/snapshots/{id}") { router, call throws(Problem) in
            try router.answer { () throws(RemapError) in try router.control.deleteSnapshot(call.parameters[0]) }
            return .noContent()
        },
        Route("POST", "/v1/snapshots/{id}/clone") { router, call throws(Problem) in
            let (name, labels) = try RequestBodies.cloneSpec(call.request)
            let (volume, created) = try router.answer { () throws(RemapError) in
                try router.control.cloneSnapshot(call.parameters[0], name: name, labels: labels)
            }
            return json(created ? 201 : 200, volume)
        },
        Route("GET", "/v1/snapshots/{id}/changes", query: ["base"]) { router, call throws(Problem) in
            json(200, try router.answer { () throws(RemapError) in
                try router.control.snapshotChanges(call.parameters[0], base: call.query.value("base"))
            })
        },
        Route("GET", "/v1/snapshots/{id}/content") { router, call throws(Problem) in
            try router.content(call.request, snapshot: call.parameters[0])
        },
        Route("GET", "/v1/operations") { router, _ throws(Problem) in
            json(200, OperationList(operations: router.control.operationInfos().map(OperationBody.init)))
        },
        Route("GET", "/v1/operations/{id}") { router, call throws(Problem) in
            json(200, OperationBody(try router.answer { () throws(RemapError) in try router.control.operationInfo(call.parameters[0]) }))
        },
        Route("DELETE", "/v1/operations/{id}") { router, call throws(Problem) in
            let ended = try router.answer { () throws(RemapError) in try router.control.cancelOperation(call.parameters[0]) }
            return ended.map { json(200, OperationBody($0)) } ?? .noContent()
        },
        Route("GET", "/v1/pools/{name}/check") { router, call throws(Problem) in
            json(200, try router.answer { () throws(RemapError) in try router.control.checkPool(named: call.parameters[0]) })
        },
    ]

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
