import Foundation
import RemapCore

/// The JSON bodies of the API, checked field by field.
enum RequestBodies {
    static func volumeSpec(_ request: HTTPRequest) throws(Problem) -> VolumeSpec {
        let fields = try JSONFields(try body(request), allowed: ["name", "sizeBytes", "pool", "labels"])
        return VolumeSpec(
            name: try fields.string("name"),
            sizeBytes: try fields.positiveInteger("sizeBytes"),
            pool: try fields.optionalString("pool") ?? "default",
            labels: try fields.labels("labels") ?? [:])
    }

    static func volumePatch(_ request: HTTPRequest) throws(Problem) -> VolumePatch {
        let query = try QueryParameters(request.query, allowed: ["allowShrink"])
        let fields = try JSONFields(try body(request), allowed: ["sizeBytes", "labels"])
        let size = fields.object["sizeBytes"] == nil ? nil : try fields.positiveInteger("sizeBytes")
        let labels = try fields.labels("labels")
        guard size != nil || labels != nil else { throw .invalidArgument("a patch needs 'sizeBytes' or 'labels'") }
        return VolumePatch(sizeBytes: size, labels: labels, allowShrink: try query.boolean("allowShrink") ?? false)
    }

    static func poolSpec(_ request: HTTPRequest) throws(Problem) -> PoolSpec {
        let fields = try JSONFields(try body(request), allowed: ["name", "chunkSizeBytes", "suppliers"])
        let name = try fields.string("name")
        let chunkSize = fields.object["chunkSizeBytes"] == nil ? Pool.defaultChunkSize : try fields.positiveInteger("chunkSizeBytes")
        guard case .array(let list)? = fields.object["suppliers"] else {
            throw .invalidArgument(fields.object["suppliers"] == nil
                ? "field 'suppliers' is required" : "field 'suppliers' must be an array of supplier objects")
        }
        var suppliers: [SupplierSpec] = []
        for (index, item) in list.enumerated() {
            guard case .object(let object) = item else { throw .invalidArgument("suppliers[\(index)] must be an object") }
            suppliers.append(try supplier(object, "suppliers[\(index)]."))
        }
        return PoolSpec(name: name, chunkSize: chunkSize, suppliers: suppliers)
    }

    static func supplierSpec(_ request: HTTPRequest) throws(Problem) -> SupplierSpec {
        try supplier(try body(request), "")
    }

    private static func supplier(_ object: [String: JSONValue], _ prefix: String) throws(Problem) -> SupplierSpec {
        let kind = try JSONFields(object, allowed: ["kind", "path", "sizeBytes", "preallocate"], prefix: prefix).string("kind")
        switch kind {
        case "file":
            let fields = try JSONFields(object, allowed: ["kind", "path", "sizeBytes", "preallocate"], prefix: prefix)
            return .file(path: try fields.string("path"), sizeBytes: try fields.positiveInteger("sizeBytes"),
                         preallocate: try fields.boolean("preallocate") ?? true)
        case "block":
            let fields = try JSONFields(object, allowed: ["kind", "path"], prefix: prefix)
            return .block(path: try fields.string("path"))
        default:
            throw .invalidArgument("field '\(prefix)kind' must be 'file' or 'block', got '\(kind)'")
        }
    }

    private static func body(_ request: HTTPRequest) throws(Problem) -> [String: JSONValue] {
        if let type = request.contentType {
            let media = type.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            guard media == "application/json" else {
                throw Problem(status: 415, code: "unsupported-media-type", title: "Unsupported media type",
                              detail: "request body must be application/json, got '\(type)'")
            }
        }
        guard !request.body.isEmpty else { throw .invalidArgument("request body is empty; a JSON object is required") }
        return try JSONValue.object(from: request.body)
    }
}

/// The query parameters of one request, checked against what the endpoint takes.
struct QueryParameters {
    private let values: [String: String]

    init(_ query: [(name: String, value: String)], allowed: Set<String>) throws(Problem) {
        var values: [String: String] = [:]
        for (name, value) in query {
            guard allowed.contains(name) else {
                throw .invalidArgument("unknown query parameter '\(name)'; allowed: \(allowed.sorted().joined(separator: ", "))")
            }
            guard values[name] == nil else { throw .invalidArgument("query parameter '\(name)' given twice") }
            values[name] = value
        }
        self.values = values
    }

    func value(_ name: String) -> String? { values[name] }

    func integer(_ name: String, in range: ClosedRange<Int>) throws(Problem) -> Int? {
        guard let text = values[name] else { return nil }
        guard let number = Int(text), range.contains(number) else {
            throw .invalidArgument("query parameter '\(name)' must be an integer from \(range.lowerBound) to \(range.upperBound), got '\(text)'")
        }
        return number
    }

    func boolean(_ name: String) throws(Problem) -> Bool? {
        switch values[name] {
        case nil: return nil
        case "true": return true
        case "false": return false
        case let other?: throw .invalidArgument("query parameter '\(name)' must be true or false, got '\(other)'")
        }
    }
}
