import Foundation
import RemapCore

/// Routes REST requests to the control plane and turns answers and errors
/// into JSON and problem+json.
public struct Router: Sendable {
    let control: any ControlPlane

    public init(control: any ControlPlane) {
        self.control = control
    }

    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        do {
            return try route(request)
        } catch {
            return Self.problem(error)
        }
    }

    private func route(_ request: HTTPRequest) throws(Problem) -> HTTPResponse {
        var parts: [String] = []
        for segment in request.path.split(separator: "/", omittingEmptySubsequences: false).dropFirst() {
            guard let decoded = percentDecoded(segment) else {
                throw Problem.invalidArgument("malformed percent-encoding in path segment '\(segment)'")
            }
            parts.append(decoded)
        }
        switch parts.count >= 1 && parts[0] == "v1" ? Array(parts.dropFirst()) : [] {
        case ["health"]:
            try allow(request, ["GET"])
            return Self.json(200, ["status": "ok"])
        case ["version"]:
            try allow(request, ["GET"])
            return Self.json(200, ["version": remapVersion, "api": "v1", "engine": control.engineName])
        case ["pools"]:
            try allow(request, ["GET"])
            return Self.json(200, PoolList(pools: control.poolInfos()))
        case let path where path.count == 2 && path[0] == "pools":
            try allow(request, ["GET"])
            return Self.json(200, try answer { () throws(RemapError) in try control.poolInfo(named: path[1]) })
        case ["volumes"]:
            try allow(request, ["GET", "POST"])
            if request.method == "GET" { return Self.json(200, VolumeList(volumes: control.volumeInfos())) }
            let spec = try volumeSpec(request)
            let (volume, created) = try answer { () throws(RemapError) in try control.createVolume(spec) }
            return Self.json(created ? 201 : 200, volume)
        case let path where path.count == 2 && path[0] == "volumes":
            try allow(request, ["GET", "DELETE"])
            if request.method == "GET" {
                return Self.json(200, try answer { () throws(RemapError) in try control.volumeInfo(named: path[1]) })
            }
            try answer { () throws(RemapError) in try control.deleteVolume(named: path[1]) }
            return .noContent()
        default:
            throw Problem.notFound("no such endpoint: \(request.path)")
        }
    }

    private func answer<T>(_ body: () throws(RemapError) -> T) throws(Problem) -> T {
        do { return try body() } catch { throw Problem(error) }
    }

    private func allow(_ request: HTTPRequest, _ methods: [String]) throws(Problem) {
        guard methods.contains(request.method) else {
            var problem = Problem(status: 405, code: "method-not-allowed", title: "Method not allowed",
                                  detail: "\(request.method) is not allowed on \(request.path); allowed: \(methods.joined(separator: ", "))")
            problem.allow = methods.joined(separator: ", ")
            throw problem
        }
    }

    private func volumeSpec(_ request: HTTPRequest) throws(Problem) -> VolumeSpec {
        try requireJSON(request)
        let fields = try JSONFields(try JSONValue.object(from: request.body), allowed: ["name", "sizeBytes", "pool"])
        let name = try fields.string("name")!  // invariant: required fields are never nil
        let size = try fields.positiveInteger("sizeBytes")
        let pool = try fields.string("pool", required: false) ?? "default"
        return VolumeSpec(name: name, sizeBytes: size, pool: pool)
    }

    private func requireJSON(_ request: HTTPRequest) throws(Problem) {
        if let type = request.contentType {
            let media = type.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            guard media == "application/json" else {
                throw Problem(status: 415, code: "unsupported-media-type", title: "Unsupported media type",
                              detail: "request body must be application/json, got '\(type)'")
            }
        }
        guard !request.body.isEmpty else { throw .invalidArgument("request body is empty; a JSON object is required") }
    }

    // MARK: - Encoding

    static func json<T: Encodable>(_ status: Int, _ value: T) -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else {
            return problem(Problem(status: 500, code: "internal", title: "Internal error", detail: "response encoding failed"))
        }
        return HTTPResponse(status: status, contentType: "application/json", body: Array(data) + [0x0a])
    }

    static func problem(_ problem: Problem) -> HTTPResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = (try? encoder.encode(problem)).map { Array($0) + [0x0a] } ?? Array("{\"status\":500}\n".utf8)
        var response = HTTPResponse(status: problem.status, contentType: "application/problem+json", body: body)
        if let allow = problem.allow { response.headers.append(("Allow", allow)) }
        return response
    }
}

struct PoolList: Encodable { var pools: [PoolInfo] }
struct VolumeList: Encodable { var volumes: [VolumeInfo] }
