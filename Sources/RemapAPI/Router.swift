import Foundation
import RemapCore
import RemapWire

/// Routes REST requests to the control plane and turns answers and errors
/// into JSON and problem+json.
public struct Router: Sendable {
    let control: any ControlPlane
    let statistics = HTTPStatistics()

    public init(control: any ControlPlane) {
        self.control = control
    }

    /// Answers `request`, counting it for /metrics under its route template.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        let started = DispatchTime.now().uptimeNanoseconds
        var route = "unknown"
        let response: HTTPResponse
        do {
            response = try self.route(request, &route)
        } catch {
            response = Self.problem(error)
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        statistics.record(route: route, method: request.method, status: response.status, seconds: seconds)
        return response
    }

    private func route(_ request: HTTPRequest, _ route: inout String) throws(Problem) -> HTTPResponse {
        var parts: [String] = []
        for segment in request.path.split(separator: "/", omittingEmptySubsequences: false).dropFirst() {
            guard let decoded = percentDecoded(segment) else {
                throw Problem.invalidArgument("malformed percent-encoding in path segment '\(segment)'")
            }
            parts.append(decoded)
        }
        if parts == ["metrics"] {
            route = "/metrics"
            try allow(request, ["GET"])
            try noQuery(request)
            return metrics()
        }
        let path = parts.first == "v1" ? Array(parts.dropFirst()) : []
        if !path.isEmpty, let response = try snapshotRoute(request, path, &route) { return response }
        switch path.count {
        case 1 where path[0] == "health":
            route = "/v1/health"
            try allow(request, ["GET"])
            try noQuery(request)
            return Self.json(200, Health(status: "ok"))
        case 1 where path[0] == "version":
            route = "/v1/version"
            try allow(request, ["GET"])
            try noQuery(request)
            return Self.json(200, ServerVersion(version: remapVersion, api: "v1", engine: control.engineName))
        case 1 where path[0] == "limits":
            route = "/v1/limits"
            try allow(request, ["GET"])
            try noQuery(request)
            return Self.json(200, control.limits)
        case 1 where path[0] == "pools":
            route = "/v1/pools"
            try allow(request, ["GET", "POST"])
            try noQuery(request)
            if request.method == "GET" { return Self.json(200, PoolList(pools: control.poolInfos())) }
            let spec = try RequestBodies.poolSpec(request)
            let (pool, created) = try answer { () throws(RemapError) in try control.createPool(spec) }
            return Self.json(created ? 201 : 200, pool)
        case 2 where path[0] == "pools":
            route = "/v1/pools/{name}"
            try allow(request, ["GET", "PATCH", "DELETE"])
            try noQuery(request)
            switch request.method {
            case "GET":
                return Self.json(200, try answer { () throws(RemapError) in try control.poolInfo(named: path[1]) })
            case "PATCH":
                let (policy, thresholds) = try RequestBodies.poolPatch(request)
                return Self.json(200, try answer { () throws(RemapError) in
                    try control.updatePool(named: path[1], onNoSpace: policy, thresholds: thresholds)
                })
            default:
                try answer { () throws(RemapError) in try control.deletePool(named: path[1]) }
                return .noContent()
            }
        case 3 where path[0] == "pools" && path[2] == "clear-errors":
            route = "/v1/pools/{name}/clear-errors"
            try allow(request, ["POST"])
            try noQuery(request)
            try RequestBodies.noFields(request)
            return Self.json(200, try answer { () throws(RemapError) in try control.clearPoolErrors(named: path[1]) })
        case 2 where path[0] == "debug" && path[1] == "faults" && control.faultState() != nil:
            route = "/v1/debug/faults"
            try allow(request, ["GET", "PUT", "DELETE"])
            try noQuery(request)
            switch request.method {
            case "GET":
                return Self.json(200, control.faultState())
            case "PUT":
                let rules = try RequestBodies.faultRules(request)
                return Self.json(200, try answer { () throws(RemapError) in try control.setFaultRules(rules) })
            default:
                _ = try answer { () throws(RemapError) in try control.setFaultRules([]) }
                return .noContent()
            }
        case 4 where path[0] == "pools" && path[2] == "suppliers":
            route = "/v1/pools/{name}/suppliers/{id}"
            try allow(request, ["PATCH"])
            try noQuery(request)
            let size = try RequestBodies.supplierPatch(request)
            return Self.json(200, try answer { () throws(RemapError) in
                try control.growSupplier(pool: path[1], supplier: path[3], to: size)
            })
        case 3 where path[0] == "volumes" && path[2] == "reservations":
            route = "/v1/volumes/{name}/reservations"
            try allow(request, ["GET", "POST"])
            try noQuery(request)
            if request.method == "GET" {
                let list = try answer { () throws(RemapError) in try control.reservationInfos(volume: path[1]) }
                return Self.json(200, ReservationList(reservations: list))
            }
            let spec = try RequestBodies.reservationSpec(request)
            let (reservation, created) = try answer { () throws(RemapError) in try control.createReservation(volume: path[1], spec) }
            return Self.json(created ? 201 : 200, reservation)
        case 4 where path[0] == "volumes" && path[2] == "reservations":
            route = "/v1/volumes/{name}/reservations/{id}"
            try allow(request, ["GET", "DELETE"])
            try noQuery(request)
            if request.method == "GET" {
                return Self.json(200, try answer { () throws(RemapError) in try control.reservationInfo(volume: path[1], id: path[3]) })
            }
            try answer { () throws(RemapError) in try control.deleteReservation(volume: path[1], id: path[3]) }
            return .noContent()
        case 5 where path[0] == "volumes" && path[2] == "reservations" && path[4] == "renew":
            route = "/v1/volumes/{name}/reservations/{id}/renew"
            try allow(request, ["POST"])
            try noQuery(request)
            let ttl = try RequestBodies.renewal(request)
            return Self.json(200, try answer { () throws(RemapError) in
                try control.renewReservation(volume: path[1], id: path[3], ttlSeconds: ttl)
            })
        case 1 where path[0] == "exports":
            route = "/v1/exports"
            try allow(request, ["GET", "POST"])
            try noQuery(request)
            if request.method == "GET" { return Self.json(200, ExportList(exports: control.exportInfos())) }
            let (volume, reservation, name) = try RequestBodies.exportSpec(request)
            return Self.json(201, try answer { () throws(RemapError) in
                try control.createExport(volume: volume, reservation: reservation, exportName: name)
            })
        case 2 where path[0] == "exports":
            route = "/v1/exports/{name}"
            try allow(request, ["DELETE"])
            try noQuery(request)
            try answer { () throws(RemapError) in try control.deleteExport(named: path[1]) }
            return .noContent()
        case 1 where path[0] == "events":
            route = "/v1/events"
            try allow(request, ["GET"])
            let query = try QueryParameters(request.query, allowed: ["since"])
            var since: UInt64 = 0
            if let text = query.value("since") {
                guard let number = UInt64(text), number <= UInt64(Int64.max) else {
                    throw .invalidArgument("since must be an event number (an integer from 0 to \(Int64.max)), got '\(text)'")
                }
                since = number
            }
            if let header = request.lastEventID {
                guard !header.isEmpty, header.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
                    throw .invalidArgument("Last-Event-ID must be an event number, got '\(header)'")
                }
                // A number past any event means "nothing before it".
                since = max(since, min(UInt64(header) ?? UInt64.max, UInt64(Int64.max)))
            }
            if request.accept?.contains("text/event-stream") == true {
                guard let connection = request.connection else {
                    return HTTPResponse.eventStream(EventStream(control: control, after: since, slot: nil))
                }
                guard let slot = connection.eventStreams.take() else {
                    var problem = Problem(
                        .tooManyStreams,
                        detail: "this listener already serves \(connection.eventStreams.limit) event streams (--http-max-event-streams); try again later, or poll GET /v1/events?since=N")
                    problem.retryAfterSeconds = 5
                    throw problem
                }
                return HTTPResponse.eventStream(EventStream(control: control, after: since, slot: slot,
                                                            clientLeft: connection.clientLeft))
            }
            let (events, last) = control.events(after: since)
            return Self.json(200, EventList(events: events, lastSeq: Int(clamping: last)))
        case 3 where path[0] == "pools" && path[2] == "suppliers":
            route = "/v1/pools/{name}/suppliers"
            try allow(request, ["POST"])
            try noQuery(request)
            let spec = try RequestBodies.supplierSpec(request)
            return Self.json(201, try answer { () throws(RemapError) in try control.addSupplier(toPool: path[1], spec) })
        case 1 where path[0] == "volumes":
            route = "/v1/volumes"
            try allow(request, ["GET", "POST"])
            if request.method == "GET" { return try listVolumes(request) }
            try noQuery(request)
            let (spec, source, sizeGiven) = try RequestBodies.volumeCreation(request)
            if let source { return try importVolume(spec, sizeGiven: sizeGiven, from: source) }
            let (volume, created) = try answer { () throws(RemapError) in try control.createVolume(spec) }
            return Self.json(created ? 201 : 200, volume)
        case 2 where path[0] == "volumes":
            route = "/v1/volumes/{name}"
            try allow(request, ["GET", "PATCH", "DELETE"])
            switch request.method {
            case "GET":
                try noQuery(request)
                return Self.json(200, try answer { () throws(RemapError) in try control.volumeInfo(named: path[1]) })
            case "PATCH":
                let patch = try RequestBodies.volumePatch(request)
                return Self.json(200, try answer { () throws(RemapError) in try control.updateVolume(named: path[1], patch) })
            default:
                try noQuery(request)
                try answer { () throws(RemapError) in try control.deleteVolume(named: path[1]) }
                return .noContent()
            }
        default:
            throw Problem.notFound("no such endpoint: \(request.path)")
        }
    }

    /// `GET /v1/volumes?pool=&label=&limit=&pageToken=`: filtered, sorted by
    /// name, one page at a time.
    private func listVolumes(_ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        let query = try QueryParameters(request.query, allowed: ["pool", "label", "limit", "pageToken"])
        let limit = try query.integer("limit", in: 1...1000) ?? 100
        var volumes = control.volumeInfos()
        if let pool = query.value("pool") {
            do { try Name.validate(pool, kind: "pool") } catch { throw Problem(error) }
            volumes = volumes.filter { $0.pool == pool }
        }
        if let label = query.value("label") {
            // Split on the first '=' byte: a Character split would miss an
            // '=' that a combining mark or emoji modifier joins to what follows.
            let bytes = Array(label.utf8)
            let parts: [String] = bytes.firstIndex(of: UInt8(ascii: "=")).map {
                [String(decoding: bytes[..<$0], as: UTF8.self), String(decoding: bytes[($0 + 1)...], as: UTF8.self)]
            } ?? [label]
            guard !parts[0].isEmpty else { throw .invalidArgument("label filter must be 'key' or 'key=value', got '\(label)'") }
            do { try Labels.validate([parts[0]: parts.count > 1 ? parts[1] : ""]) } catch { throw Problem(error) }
            volumes = volumes.filter { parts.count == 1 ? $0.labels[parts[0]] != nil : $0.labels[parts[0]] == parts[1] }
        }
        if let token = query.value("pageToken") {
            guard let after = PageToken.decode(token) else { throw .invalidArgument("pageToken '\(token)' is not valid") }
            volumes = volumes.filter { $0.name > after }
        }
        let page = Array(volumes.prefix(limit))
        let next = volumes.count > limit ? page.last.map { PageToken.encode($0.name) } : nil
        return Self.json(200, VolumeList(volumes: page, nextPageToken: next))
    }

    private func metrics() -> HTTPResponse {
        let text = MetricsText.render(
            pools: control.poolInfos(), volumes: control.volumeInfos(),
            dataPath: control.dataPathStatistics(), http: statistics.snapshot())
        return HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: Array(text.utf8))
    }

    func answer<T>(_ body: () throws(RemapError) -> T) throws(Problem) -> T {
        do { return try body() } catch { throw Problem(error) }
    }

    func allow(_ request: HTTPRequest, _ methods: [String]) throws(Problem) {
        guard methods.contains(request.method) else {
            var problem = Problem(.methodNotAllowed,
                                  detail: "\(request.method) is not allowed on \(request.path); allowed: \(methods.joined(separator: ", "))")
            problem.allow = methods.joined(separator: ", ")
            throw problem
        }
    }

    func noQuery(_ request: HTTPRequest) throws(Problem) {
        if let first = request.query.first {
            throw .invalidArgument("unknown query parameter '\(first.name)'")
        }
    }

    // MARK: - Encoding

    static func json<T: Encodable>(_ status: Int, _ value: T) -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else {
            return problem(Problem(.internalError, detail: "response encoding failed"))
        }
        return HTTPResponse(status: status, contentType: "application/json", body: Array(data) + [0x0a])
    }

    static func problem(_ problem: Problem) -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = (try? encoder.encode(problem)).map { Array($0) + [0x0a] } ?? Array("{\"status\":500}\n".utf8)
        var response = HTTPResponse(status: problem.status, contentType: "application/problem+json", body: body)
        if let allow = problem.allow { response.headers.append(("Allow", allow)) }
        if problem.status == 401 { response.headers.append(("WWW-Authenticate", "Bearer realm=\"remap\"")) }
        if let seconds = problem.retryAfterSeconds { response.headers.append(("Retry-After", String(seconds))) }
        return response
    }
}

/// Page tokens are opaque to clients: the hex of the last name returned.
enum PageToken {
    static func encode(_ name: String) -> String {
        name.utf8.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    static func decode(_ token: String) -> String? {
        let digits = Array(token.utf8)
        guard !digits.isEmpty, digits.count % 2 == 0, digits.count <= 512 else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: digits.count, by: 2) {
            guard let byte = UInt8(String(decoding: digits[index..<index + 2], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(byte)
        }
        return String(validating: bytes, as: UTF8.self)
    }
}
