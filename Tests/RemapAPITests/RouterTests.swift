import Foundation
@testable import RemapAPI
import RemapCore
import Testing

/// The route table against a control plane that records its calls: every
/// template routes, a known path with a wrong method is 405 with `Allow`, an
/// unknown one 404, and /metrics counts each under its template.
@Suite struct RouterTests {
    private func send(_ router: Router, _ method: String, _ path: String, query: [(name: String, value: String)] = [],
                      body: String = "") -> HTTPResponse {
        var request = HTTPRequest(method: method, path: path, body: Array(body.utf8))
        request.query = query
        if !body.isEmpty { request.contentType = "application/json" }
        return router.handle(request)
    }

    private func object(_ response: HTTPResponse) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
    }

    private func header(_ response: HTTPResponse, _ name: String) -> String? {
        response.headers.first { $0.0 == name }?.1
    }

    /// The labels counted so far, as `route method status`.
    private func counted(_ router: Router) -> Set<String> {
        Set(router.statistics.snapshot().requests.keys.map { "\($0.route) \($0.method) \($0.status)" })
    }

    /// The template with each `{parameter}` filled in.
    private func concrete(_ template: String) -> String {
        template.split(separator: "/", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("{") ? "x" + $0.dropFirst().dropLast() : String($0) }.joined(separator: "/")
    }

    @Test func every_template_routes_to_its_own_entry_and_is_counted_under_it() {
        let router = Router(control: RecordingControlPlane(faultInjection: true))
        for route in Router.routes {
            let response = send(router, route.method, concrete(route.template))
            let detail = (try? object(response))?["detail"] as? String ?? ""
            #expect(!detail.hasPrefix("no such endpoint"), "\(route.method) \(route.template)")
            #expect(response.status != 405, "\(route.method) \(route.template)")
            #expect(counted(router).contains { $0.hasPrefix("\(route.template) \(route.method) ") },
                    "\(route.method) \(route.template) was not counted under its template")
        }
        #expect(!counted(router).contains { $0.hasPrefix("unknown") })
    }

    /// Each operation of openapi/remap.yaml (`METHOD template`) with the
    /// names of its query parameters.
    private func documentedOperations() throws -> [String: Set<String>] {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../openapi/remap.yaml")
        let text = try String(contentsOf: url, encoding: .utf8)
        var operations: [String: Set<String>] = [:]
        var path: String?
        var operation: String?
        var parameter: String?
        var inPaths = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if !line.isEmpty, !line.hasPrefix(" ") { inPaths = line == "paths:" }
            guard inPaths else { continue }
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("  /"), line.hasSuffix(":") {
                (path, operation) = (String(line.dropFirst(2).dropLast()), nil)
            } else if let path, line.hasPrefix("    "), !line.hasPrefix("     "), line.hasSuffix(":") {
                let method = trimmed.dropLast().uppercased()
                operation = ["GET", "POST", "PUT", "PATCH", "DELETE"].contains(method) ? "\(method) \(path)" : nil
                if let operation { operations[operation] = [] }
            } else if trimmed.hasPrefix("- name: ") {
                parameter = String(trimmed.dropFirst(8))
            } else if trimmed == "in: query", let operation, let name = parameter {
                operations[operation, default: []].insert(name)
            }
        }
        return operations
    }

    @Test func templates_methods_and_query_parameters_are_those_of_the_openapi_document() throws {
        let documented = try documentedOperations()
        var served: [String: Set<String>] = [:]
        for route in Router.routes where !route.needsFaultInjection { served["\(route.method) \(route.template)"] = route.query }
        #expect(Set(documented.keys).subtracting(served.keys).isEmpty)
        #expect(Set(served.keys).subtracting(documented.keys).isEmpty)
        for (operation, query) in served { #expect(documented[operation] == query, "\(operation)") }
        #expect(documented["GET /v1/volumes"] == ["pool", "label", "limit", "pageToken"])
    }

    @Test func a_known_path_with_another_method_is_405_with_allow() throws {
        let router = Router(control: RecordingControlPlane())
        for (method, path, allow) in [("DELETE", "/v1/pools", "GET, POST"), ("PUT", "/v1/volumes/vm1", "GET, PATCH, DELETE"),
                                      ("POST", "/v1/health", "GET"), ("GET", "/v1/exports/e", "DELETE"),
                                      ("DELETE", "/v1/snapshots/s/clone", "POST"), ("BREW", "/metrics", "GET")] {
            let response = send(router, method, path)
            #expect(response.status == 405, "\(method) \(path)")
            #expect(header(response, "Allow") == allow, "\(method) \(path)")
            #expect(try object(response)["code"] as? String == "method-not-allowed")
        }
        #expect(counted(router).isSuperset(of: ["/v1/pools DELETE 405", "/v1/volumes/{name} PUT 405", "/metrics other 405"]))
    }

    @Test func an_unknown_path_is_404_and_counted_as_unknown() throws {
        let router = Router(control: RecordingControlPlane())
        for path in ["/v1/nope", "/v1", "/", "/v1/pools/p/suppliers/s/extra", "/metrics/", "/pools", "/v1/debug/faults"] {
            let response = send(router, "GET", path)
            #expect(response.status == 404, "\(path)")
            #expect(header(response, "Allow") == nil)
            #expect(try object(response)["code"] as? String == "not-found")
        }
        #expect(counted(router) == ["unknown GET 404"])
        #expect(send(router, "GET", "/v1/pools/%zz").status == 400)
    }

    @Test func fault_routes_exist_only_with_fault_injection() {
        #expect(send(Router(control: RecordingControlPlane()), "DELETE", "/v1/debug/faults").status == 404)
        let control = RecordingControlPlane(faultInjection: true)
        let router = Router(control: control)
        #expect(send(router, "GET", "/v1/debug/faults").status == 200)
        #expect(send(router, "DELETE", "/v1/debug/faults").status == 204)
        #expect(control.calls == ["setFaultRules 0"])
    }

    @Test func query_parameters_are_checked_against_the_route() throws {
        let control = RecordingControlPlane()
        let router = Router(control: control)
        let health = send(router, "GET", "/v1/health", query: [("verbose", "1")])
        #expect(health.status == 400)
        #expect(try object(health)["detail"] as? String == "unknown query parameter 'verbose'")
        let snapshots = send(router, "GET", "/v1/snapshots", query: [("pool", "p")])
        #expect(snapshots.status == 400)
        #expect(try object(snapshots)["detail"] as? String == "unknown query parameter 'pool'; allowed: volume")
        #expect(send(router, "GET", "/v1/snapshots", query: [("volume", "a"), ("volume", "b")]).status == 400)
        #expect(send(router, "DELETE", "/v1/volumes/vm1", query: [("allowShrink", "true")]).status == 400)
        #expect(send(router, "GET", "/v1/snapshots", query: [("volume", "vm1")]).status == 200)
        #expect(send(router, "GET", "/v1/events", query: [("since", "7")]).status == 200)
        #expect(send(router, "PATCH", "/v1/volumes/vm1", query: [("allowShrink", "true")], body: #"{"sizeBytes": 4096}"#)
            .status == 404)
        #expect(control.calls == ["snapshotInfos vm1", "events 7", "updateVolume vm1 allowShrink"])
    }

    @Test func handlers_get_the_decoded_path_parameters() throws {
        let control = RecordingControlPlane()
        let router = Router(control: control)
        #expect(send(router, "DELETE", "/v1/volumes/vm%201").status == 204)
        #expect(send(router, "DELETE", "/v1/volumes/vm1/reservations/r-2").status == 204)
        #expect(send(router, "PATCH", "/v1/pools/fast/suppliers/s-3", body: #"{"sizeBytes": 1073741824}"#).status == 404)
        #expect(send(router, "GET", "/v1/volumes/vm1/reservations").status == 200)
        #expect(send(router, "DELETE", "/v1/operations/op-4").status == 204)
        #expect(send(router, "GET", "/v1/snapshots/vm1@mon/changes", query: [("base", "vm1@sun")]).status == 404)
        #expect(control.calls == ["deleteVolume vm 1", "deleteReservation vm1 r-2", "growSupplier fast s-3",
                                  "reservationInfos vm1", "cancelOperation op-4", "snapshotChanges vm1@mon vm1@sun"])
    }

    @Test func happy_paths_answer_json() throws {
        let router = Router(control: RecordingControlPlane())
        let health = send(router, "GET", "/v1/health")
        #expect(health.status == 200)
        #expect(health.contentType == "application/json")
        #expect(try object(health)["status"] as? String == "ok")
        #expect(try object(send(router, "GET", "/v1/version"))["engine"] as? String == "recording")
        #expect(try object(send(router, "GET", "/v1/pools"))["pools"] as? [Any] != nil)
        #expect(try object(send(router, "GET", "/v1/volumes", query: [("limit", "5")]))["volumes"] as? [Any] != nil)
        #expect(send(router, "GET", "/v1/volumes", query: [("limit", "0")]).status == 400)
    }

    @Test func metrics_label_requests_with_their_template() {
        let router = Router(control: RecordingControlPlane())
        _ = send(router, "GET", "/v1/pools/fast")
        _ = send(router, "GET", "/v1/pools/slow")
        _ = send(router, "DELETE", "/v1/pools")
        _ = send(router, "GET", "/v1/nope")
        let text = String(decoding: send(router, "GET", "/metrics").body, as: UTF8.self)
        #expect(text.contains(#"remap_http_requests_total{route="/v1/pools/{name}",method="GET",status="404"} 2"#))
        #expect(text.contains(#"remap_http_requests_total{route="/v1/pools",method="DELETE",status="405"} 1"#))
        #expect(text.contains(#"remap_http_requests_total{route="unknown",method="GET",status="404"} 1"#))
        #expect(!text.contains("fast"))
    }
}
