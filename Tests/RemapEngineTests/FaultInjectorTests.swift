import Foundation
import Glibc
import RemapCore
@testable import RemapEngine
import Testing

@Suite struct FaultInjectorTests {
    func injector(_ rules: [FaultRule]) throws -> FaultInjector {
        let faults = FaultInjector()
        try faults.enable(rules: rules)
        return faults
    }

    @Test func a_disabled_injector_lets_everything_through_and_counts_nothing() {
        let faults = FaultInjector()
        #expect(faults.fault(.supplierWrite, fd: 3) == nil)
        #expect(faults.blockingFault(.metadataCommit) == 0)
        #expect(faults.snapshot.calls.isEmpty)
    }

    @Test func after_and_count_pick_which_calls_fail() throws {
        let faults = try injector([FaultRule(target: .supplierSync, error: .eio, after: 2, count: 3)])
        let results = (0..<8).map { _ in faults.blockingFault(.supplierSync, fd: 7) }
        #expect(results == [0, 0, EIO, EIO, EIO, 0, 0, 0])
        #expect(faults.snapshot.rules.map(\.hits) == [3])
        #expect(faults.snapshot.calls["supplier-sync"] == 8)
        // Other seams are not touched by the rule.
        #expect(faults.fault(.supplierWrite, fd: 7) == nil)
    }

    @Test func a_pool_filter_matches_only_that_pools_suppliers() throws {
        let faults = try injector([FaultRule(target: .supplierWrite, error: .enospc, pool: "b")])
        faults.register(fd: 10, pool: "a")
        faults.register(fd: 11, pool: "b")
        #expect(faults.fault(.supplierWrite, fd: 10) == nil)
        #expect(faults.fault(.supplierWrite, fd: 11) == .fail(ENOSPC))
    }

    @Test func a_seed_makes_random_faults_repeatable() throws {
        func pattern() throws -> [Bool] {
            let faults = try injector([FaultRule(target: .supplierRead, error: .short, probability: 0.3, seed: 42)])
            return (0..<200).map { _ in faults.fault(.supplierRead, fd: 1) != nil }
        }
        let first = try pattern()
        #expect(first == (try pattern()))
        let hits = first.filter { $0 }.count
        #expect(hits > 30 && hits < 90)
    }

    @Test func short_applies_to_data_io_and_fails_other_calls() throws {
        let faults = try injector([
            FaultRule(target: .supplierWrite, error: .short),
            FaultRule(target: .supplierSync, error: .short),
        ])
        #expect(faults.fault(.supplierWrite, fd: 1) == .short)
        #expect(faults.blockingFault(.supplierSync, fd: 1) == EIO)
    }

    @Test func rules_decode_with_defaults_and_refuse_bad_values() throws {
        let rule = try JSONDecoder().decode(FaultRule.self, from: Data(#"{"target": "metadata-commit", "error": "ENOSPC"}"#.utf8))
        #expect(rule == FaultRule(target: .metadataCommit, error: .enospc))
        #expect(throws: (any Error).self) {
            _ = try JSONDecoder().decode(FaultRule.self, from: Data(#"{"target": "supplier-write", "error": "EIO", "probability": 2}"#.utf8))
        }
        #expect(throws: (any Error).self) {
            _ = try JSONDecoder().decode(FaultRule.self, from: Data(#"{"target": "disk", "error": "EIO"}"#.utf8))
        }
    }
}
