import Foundation
import RemapCore
import RemapWire

/// One REST endpoint: a method on a path template, the query parameters it
/// takes, and the handler that answers it. The template also names the
/// endpoint in /metrics (`remap_http_requests_total{route=...}`).
struct Route: Sendable {
    enum Segment: Equatable, Sendable {
        case literal(String)
        /// `{name}`: any decoded segment, even an empty one (the handler's
        /// validation answers that).
        case parameter
    }

    let method: String
    /// As in openapi/remap.yaml: `/v1/pools/{name}/suppliers/{id}`.
    let template: String
    let segments: [Segment]
    /// Query parameters the handler reads; any other is a 400.
    let query: Set<String>
    /// Fault injection's routes exist only while it is on (404 otherwise).
    let needsFaultInjection: Bool
    let handler: @Sendable (Router, RouteRequest) throws(Problem) -> HTTPResponse

    init(_ method: String, _ template: String, query: Set<String> = [], needsFaultInjection: Bool = false,
         _ handler: @escaping @Sendable (Router, RouteRequest) throws(Problem) -> HTTPResponse) {
        self.method = method
        self.template = template
        self.segments = template.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map {
            $0.hasPrefix("{") ? .parameter : .literal(String($0))
        }
        self.query = query
        self.needsFaultInjection = needsFaultInjection
        self.handler = handler
    }

    /// The values of the template's parameters in `path`, or nil when it
    /// does not match.
    func parameters(of path: [String]) -> [String]? {
        guard path.count == segments.count else { return nil }
        var values: [String] = []
        for (segment, part) in zip(segments, path) {
            switch segment {
            case .literal(let text): guard text == part else { return nil }
            case .parameter: values.append(part)
            }
        }
        return values
    }
}

/// What a handler gets: the request, its path parameters in template order,
/// and its query, already checked against the route's.
struct RouteRequest {
    let request: HTTPRequest
    let parameters: [String]
    let query: QueryParameters
}

/// Routes REST requests to the control plane and turns answers and errors
/// into JSON and problem+json.
public struct Router: Sendable {
    let control: any ControlPlane
    let statistics = HTTPStatistics()

    public init(control: any ControlPlane) {
        self.control = control
    }

    /// Every endpoint, in the order `Allow` lists a path's methods.
    static let routes: [Route] = coreRoutes + snapshotRoutes

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

    /// The routes whose template `path` matches, with its parameters; empty
    /// when no endpoint has that path (a 404). A scan of a few dozen entries:
    /// cheaper than the JSON of any answer.
    private func matches(_ path: [String]) -> [(route: Route, parameters: [String])] {
        var found: [(route: Route, parameters: [String])] = []
        for route in Self.routes {
            guard let parameters = route.parameters(of: path) else { continue }
            if route.needsFaultInjection, control.faultState() == nil { continue }
            found.append((route, parameters))
        }
        return found
    }

    /// `label` becomes the matched template, even when the method is wrong.
    private func route(_ request: HTTPRequest, _ label: inout String) throws(Problem) -> HTTPResponse {
        var path: [String] = []
        for segment in request.path.split(separator: "/", omittingEmptySubsequences: false).dropFirst() {
            guard let decoded = percentDecoded(segment) else {
                throw Problem.invalidArgument("malformed percent-encoding in path segment '\(segment)'")
            }
            path.append(decoded)
        }
        let found = matches(path)
        guard let first = found.first else { throw Problem.notFound("no such endpoint: \(request.path)") }
        label = first.route.template
        guard let (route, parameters) = found.first(where: { $0.route.method == request.method }) else {
            let methods = found.map(\.route.method).joined(separator: ", ")
            var problem = Problem(.methodNotAllowed, detail: "\(request.method) is not allowed on \(request.path); allowed: \(methods)")
            problem.allow = methods
            throw problem
        }
        // A route that takes no query names only the stray parameter, as it always has.
        if route.query.isEmpty, let first = request.query.first {
            throw .invalidArgument("unknown query parameter '\(first.name)'")
        }
        let query = try QueryParameters(request.query, allowed: route.query)
        return try route.handler(self, RouteRequest(request: request, parameters: parameters, query: query))
    }

    /// The daemon's own routes and those of pools, volumes, reservations,
    /// exports and events.
    static let coreRoutes: [Route] = [
        Route("GET", "/metrics") { router, _ throws(Problem) in router.metrics() },
        Route("GET", "/v1/health") { _, _ throws(Problem) in json(200, Health(status: "ok")) },
        Route("GET", "/v1/version") { router, _ throws(Problem) in
            json(200, ServerVersion(version: remapVersion, api: "v1", engine: router.control.engineName))
        },
        Route("GET", "/v1/limits") { router, _ throws(Problem) in json(200, router.control.limits) },

        Route("GET", "/v1/pools") { router, _ throws(Problem) in json(200, PoolList(pools: router.control.poolInfos())) },
        Route("POST", "/v1/pools") { router, call throws(Problem) in
            let spec = try RequestBodies.poolSpec(call.request)
            let (pool, created) = try router.answer { () throws(RemapError) in try router.control.createPool(spec) }
            return json(created ? 201 : 200, pool)
        },
        Route("GET", "/v1/pools/{name}") { router, call throws(Problem) in
            json(200, try router.answer { () throws(RemapError) in try router.control.poolInfo(named: call.parameters[0]) })
        },
        Route("PATCH", "/v1/pools/{name}") { router, call throws(Problem) in
            let (policy, thresholds) = try RequestBodies.poolPatch(call.request)
            return json(200, try router.answer { () throws(RemapError) in
                try router.control.updatePool(named: call.parameters[0], onNoSpace: policy, thresholds: thresholds)
            })
        },
        Route("DELETE", "/v1/pools/{name}") { router, call throws(Problem) in
            try router.answer { () throws(RemapError) in try router.control.deletePool(named: call.parameters[0]) }
            return .noContent()
        },
        Route("POST", "/v1/pools/{name}/clear-errors") { router, call throws(Problem) in
            try RequestBodies.noFields(call.request)
            return json(200, try router.answer { () throws(RemapError) in try router.control.clearPoolErrors(named: call.parameters[0]) })
        },
        Route("POST", "/v1/pools/{name}/suppliers") { router, call throws(Problem) in
            let spec = try RequestBodies.supplierSpec(call.request)
            return json(201, try router.answer { () throws(RemapError) in try router.control.addSupplier(toPool: call.parameters[0], spec) })
        },
        Route("PATCH", "/v1/pools/{name}/suppliers/{id}") { router, call throws(Problem) in
            let size = try RequestBodies.supplierPatch(call.request)
            return json(200, try router.answer { () throws(RemapError) in
                try router.control.growSupplier(pool: call.parameters[0], supplier: call.parameters[1], to: size)
            })
        },

        Route("GET", "/v1/debug/faults", needsFaultInjection: true) { router, _ throws(Problem) in json(200, router.control.faultState()) },
        Route("PUT", "/v1/debug/faults", needsFaultInjection: true) { router, call throws(Problem) in
            let rules = try RequestBodies.faultRules(call.request)
            return json(200, try router.answer { () throws(RemapError) in try router.control.setFaultRules(rules) })
        },
        Route("DELETE", "/v1/debug/faults", needsFaultInjection: true) { router, _ throws(Problem) in
            _ = try router.answer { () throws(RemapError) in try router.control.setFaultRules([]) }
            return .noContent()
        },

        Route("GET", "/v1/volumes", query: ["pool", "label", "limit", "pageToken"]) { router, call throws(Problem) in
            try router.listVolumes(call.query)
        },
        Route("POST", "/v1/volumes") { router, call throws(Problem) in
            let (spec, source, sizeGiven) = try RequestBodies.volumeCreation(call.request)
            if let source { return try router.importVolume(spec, sizeGiven: sizeGiven, from: source) }
            let (volume, created) = try router.answer { () throws(RemapError) in try router.control.createVolume(spec) }
            return json(created ? 201 : 200, volume)
        },
        Route("GET", "/v1/volumes/{name}") { router, call throws(Problem) in
            json(200, try router.answer { () throws(RemapError) in try router.control.volumeInfo(named: call.parameters[0]) })
        },
        Route("PATCH", "/v1/volumes/{name}", query: ["allowShrink"]) { router, call throws(Problem) in
            let patch = try RequestBodies.volumePatch(call.request)
            return json(200, try router.answer { () throws(RemapError) in try router.control.updateVolume(named: call.parameters[0], patch) })
        },
        Route("DELETE", "/v1/volumes/{name}") { router, call throws(Problem) in
            try router.answer { () throws(RemapError) in try router.control.deleteVolume(named: call.parameters[0]) }
            return .noContent()
        },

        Route("GET", "/v1/volumes/{name}/reservations") { router, call throws(Problem) in
            let list = try router.answer { () throws(RemapError) in try router.control.reservationInfos(volume: call.parameters[0]) }
            return json(200, ReservationList(reservations: list))
        },
        Route("POST", "/v1/volumes/{name}/reservations") { router, call throws(Problem) in
            let spec = try RequestBodies.reservationSpec(call.request)
            let (reservation, created) = try router.answer { () throws(RemapError) in
                try router.control.createReservation(volume: call.parameters[0], spec)
            }
            return json(created ? 201 : 200, reservation)
        },
        Route("GET", "/v1/volumes/{name}/reservations/{id}") { router, call throws(Problem) in
            json(200, try router.answer { () throws(RemapError) in
                try router.control.reservationInfo(volume: call.parameters[0], id: call.parameters[1])
            })
        },
        Route("DELETE", "/v1/volumes/{name}/reservations/{id}") { router, call throws(Problem) in
            try router.answer { () throws(RemapError) in
                try router.control.deleteReservation(volume: call.parameters[0], id: call.parameters[1])
            }
            return .noContent()
        },
        Route("POST", "/v1/volumes/{name}/reservations/{id}/renew") { router, call throws(Problem) in
            let ttl = try RequestBodies.renewal(call.request)
            return json(200, try router.answer { () throws(RemapError) in
                try router.control.renewReservation(volume: call.parameters[0], id: call.parameters[1], ttlSeconds: ttl)
            })
        },

        Route("GET", "/v1/exports") { router, _ throws(Problem) in json(200, ExportList(exports: router.control.exportInfos())) },
        Route("POST", "/v1/exports") { router, call throws(Problem) in
            let (volume, reservation, name) = try RequestBodies.exportSpec(call.request)
            return json(201, try router.answer { () throws(RemapError) in
                try router.control.createExport(volume: volume, reservation: reservation, exportName: name)
            })
        },
        Route("DELETE", "/v1/exports/{name}") { router, call throws(Problem) in
            try router.answer { () throws(RemapError) in try router.control.deleteExport(named: call.parameters[0]) }
            return .noContent()
        },

        Route("GET", "/v1/events", query: ["since"]) { router, call throws(Problem) in try router.events(call) },
    ]

    /// `GET /v1/events?since=N`: a page of events, or with
    /// `Accept: text/event-stream` a stream of them (one of the listener's slots).
    private func events(_ call: RouteRequest) throws(Problem) -> HTTPResponse {
        let request = call.request
        var since: UInt64 = 0
        if let text = call.query.value("since") {
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
    }

    /// `GET /v1/volumes?pool=&label=&limit=&pageToken=`: filtered, sorted by
    /// name, one page at a time.
    private func listVolumes(_ query: QueryParameters) throws(Problem) -> HTTPResponse {
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
