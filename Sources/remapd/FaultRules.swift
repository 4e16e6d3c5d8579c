import Foundation
import RemapCore

/// The fault-injection rules a test passes at start, in $REMAP_FAULTS: the
/// same JSON as `PUT /v1/debug/faults` (`{"rules": [...]}`).
enum FaultRules {
    static func fromEnvironment() throws(RemapError) -> [FaultRule] {
        guard let text = ProcessInfo.processInfo.environment["REMAP_FAULTS"], !text.isEmpty else { return [] }
        struct Rules: Decodable { var rules: [FaultRule] }
        do {
            return try JSONDecoder().decode(Rules.self, from: Data(text.utf8)).rules
        } catch {
            throw .invalidArgument("REMAP_FAULTS is not valid fault rules: \(error)")
        }
    }
}
