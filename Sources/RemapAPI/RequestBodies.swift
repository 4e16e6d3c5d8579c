import Foundation
import RemapCore
import RemapWire

/// The JSON bodies of the API, checked field by field.
enum RequestBodies {
    /// A volume to create, and the file to import into it, if any.
    static func volumeCreation(_ request: HTTPRequest) throws(Problem) -> (VolumeSpec, source: String?, sizeGiven: Bool) {
        let fields = try JSONFields(try body(request), allowed: ["name", "sizeBytes", "pool", "labels", "reservation", "source"])
        guard case .object(let source)? = fields.object["source"] else {
            if let other = fields.object["source"] {
                throw .invalidArgument("field 'source' must be {\"file\": PATH}, got \(other.typeName)")
            }
            return (try volumeSpec(fields), nil, true)
        }
        let path = try JSONFields(source, allowed: ["file"], prefix: "source.").path("file")
        guard fields.object["reservation"] == nil else {
            throw .invalidArgument("an imported volume cannot be created with a reservation; reserve after the import")
        }
        let sizeGiven = fields.object["sizeBytes"] != nil
        return (VolumeSpec(
            name: try fields.string("name"),
            sizeBytes: sizeGiven ? try fields.positiveInteger("sizeBytes") : 512,
            pool: try fields.optionalString("pool") ?? "default",
            labels: try fields.labels("labels") ?? [:]), path, sizeGiven)
    }

    static func snapshotName(_ request: HTTPRequest) throws(Problem) -> String {
        try JSONFields(try body(request), allowed: ["name"]).string("name")
    }

    static func cloneSpec(_ request: HTTPRequest) throws(Problem) -> (name: String, labels: [String: String]) {
        let fields = try JSONFields(try body(request), allowed: ["name", "labels"])
        return (try fields.string("name"), try fields.labels("labels") ?? [:])
    }

    static func revertSpec(_ request: HTTPRequest) throws(Problem) -> String {
        try JSONFields(try body(request), allowed: ["snapshot"]).string("snapshot")
    }

    static func volumeSpec(_ request: HTTPRequest) throws(Problem) -> VolumeSpec {
        try volumeSpec(try JSONFields(try body(request), allowed: ["name", "sizeBytes", "pool", "labels", "reservation"]))
    }

    private static func volumeSpec(_ fields: JSONFields) throws(Problem) -> VolumeSpec {
        var reservation = VolumeReservation.none
        switch fields.object["reservation"] {
        case nil, .string("none")?: break
        case .string("thick")?: reservation = .thick
        case .object(let object)?:
            reservation = .bytes(try JSONFields(object, allowed: ["bytes"], prefix: "reservation.").positiveInteger("bytes"))
        case let other?:
            throw .invalidArgument("field 'reservation' must be \"none\", \"thick\" or {\"bytes\": N}, got \(other.typeName)")
        }
        return VolumeSpec(
            name: try fields.string("name"),
            sizeBytes: try fields.positiveInteger("sizeBytes"),
            pool: try fields.optionalString("pool") ?? "default",
            labels: try fields.labels("labels") ?? [:],
            reservation: reservation)
    }

    static func reservationSpec(_ request: HTTPRequest) throws(Problem) -> ReservationSpec {
        let fields = try JSONFields(try body(request), allowed: ["bytes", "offsetBytes", "lengthBytes", "ttlSeconds", "name"])
        let amount: ReservationSpec.Amount
        if fields.object["bytes"] != nil {
            guard fields.object["offsetBytes"] == nil, fields.object["lengthBytes"] == nil else {
                throw .invalidArgument("give either 'bytes' (pooled) or 'offsetBytes' and 'lengthBytes' (range), not both")
            }
            amount = .pooled(bytes: try fields.positiveInteger("bytes"))
        } else if fields.object["lengthBytes"] != nil || fields.object["offsetBytes"] != nil {
            guard let offset = try fields.nonNegativeInteger("offsetBytes") else {
                throw .invalidArgument("a range reservation needs 'offsetBytes' as well as 'lengthBytes'")
            }
            amount = .range(offsetBytes: offset, lengthBytes: try fields.positiveInteger("lengthBytes"))
        } else {
            throw .invalidArgument("a reservation needs 'bytes' (pooled) or 'offsetBytes' and 'lengthBytes' (range)")
        }
        let ttl = fields.object["ttlSeconds"] == nil ? nil : try fields.positiveInteger("ttlSeconds")
        return ReservationSpec(amount: amount, ttlSeconds: ttl, name: try fields.optionalString("name"))
    }

    static func renewal(_ request: HTTPRequest) throws(Problem) -> UInt64? {
        guard !request.body.isEmpty else { return nil }
        let fields = try JSONFields(try body(request), allowed: ["ttlSeconds"])
        return fields.object["ttlSeconds"] == nil ? nil : try fields.positiveInteger("ttlSeconds")
    }

    static func exportSpec(_ request: HTTPRequest) throws(Problem) -> (volume: String, reservation: String?, name: String?) {
        let fields = try JSONFields(try body(request), allowed: ["volume", "reservation", "name"])
        return (try fields.string("volume"), try fields.optionalString("reservation"), try fields.optionalString("name"))
    }

    static func poolPatch(_ request: HTTPRequest) throws(Problem) -> (NoSpacePolicy?, [Int]?) {
        let fields = try JSONFields(try body(request), allowed: ["onNoSpace", "lowSpaceThresholds"])
        var policy: NoSpacePolicy?
        switch fields.object["onNoSpace"] {
        case nil: break
        case .string("error")?: policy = .error
        case .object(let object)?:
            let seconds = try JSONFields(object, allowed: ["queueSeconds"], prefix: "onNoSpace.").positiveInteger("queueSeconds")
            guard seconds <= UInt64(NoSpacePolicy.maximumQueueSeconds) else {
                throw .invalidArgument("onNoSpace.queueSeconds must be from 1 to \(NoSpacePolicy.maximumQueueSeconds)")
            }
            policy = .queue(seconds: Int(seconds))
        case let other?:
            throw .invalidArgument("field 'onNoSpace' must be \"error\" or {\"queueSeconds\": S}, got \(other.typeName)")
        }
        var thresholds: [Int]?
        switch fields.object["lowSpaceThresholds"] {
        case nil: break
        case .array(let items)?:
            thresholds = []
            for item in items {
                guard case .integer(let value) = item, (1...100).contains(value) else {
                    throw .invalidArgument("lowSpaceThresholds must hold integer percentages from 1 to 100")
                }
                thresholds?.append(Int(value))
            }
        case let other?:
            throw .invalidArgument("field 'lowSpaceThresholds' must be an array of percentages, got \(other.typeName)")
        }
        guard policy != nil || thresholds != nil else {
            throw .invalidArgument("a pool patch needs 'onNoSpace' or 'lowSpaceThresholds'")
        }
        return (policy, thresholds)
    }

    static func supplierPatch(_ request: HTTPRequest) throws(Problem) -> UInt64 {
        try JSONFields(try body(request), allowed: ["sizeBytes"]).positiveInteger("sizeBytes")
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
            return .file(path: try fields.path("path"), sizeBytes: try fields.positiveInteger("sizeBytes"),
                         preallocate: try fields.boolean("preallocate") ?? true)
        case "block":
            let fields = try JSONFields(object, allowed: ["kind", "path"], prefix: prefix)
            return .block(path: try fields.path("path"))
        default:
            throw .invalidArgument("field '\(prefix)kind' must be 'file' or 'block', got '\(kind)'")
        }
    }

    /// An action that takes no fields: an empty body or `{}`.
    static func noFields(_ request: HTTPRequest) throws(Problem) {
        guard !request.body.isEmpty else { return }
        _ = try JSONFields(try body(request), allowed: [])
    }

    /// Fault-injection rules (`PUT /v1/debug/faults`), decoded whole.
    static func faultRules(_ request: HTTPRequest) throws(Problem) -> [FaultRule] {
        _ = try JSONFields(try body(request), allowed: ["rules"])
        struct Rules: Decodable { var rules: [FaultRule] }
        do {
            return try JSONDecoder().decode(Rules.self, from: Data(request.body)).rules
        } catch {
            throw .invalidArgument("fault rules: \(error)")
        }
    }

    private static func body(_ request: HTTPRequest) throws(Problem) -> [String: JSONValue] {
        if let type = request.contentType {
            let media = type.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
            guard media == "application/json" else {
                throw Problem(.unsupportedMediaType,
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
