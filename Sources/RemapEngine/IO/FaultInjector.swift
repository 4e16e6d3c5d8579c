import Glibc
import RemapCore
import Synchronization

/// Decides, for each supplier I/O and metadata commit that passes through
/// the seam (`SupplierIO`, `Committer`), whether to fail it: the test-only
/// switch of remapd's `--fault-injection`, like swift-system's syscall
/// mocking. In release builds it can never be enabled, and a disabled
/// injector costs one relaxed atomic load per call.
public final class FaultInjector: Sendable {
    /// What happens to a call.
    enum Fault: Equatable {
        /// Fails with this errno.
        case fail(Int32)
        /// Moves fewer bytes than asked.
        case short
        /// Succeeds after this many milliseconds.
        case delay(UInt64)
    }

    /// Whether this build can inject faults at all.
    public static var isAvailable: Bool {
        #if DEBUG
        return true
        #else
        return false
        #endif
    }

    private struct Armed {
        var rule: FaultRule
        var seen: UInt64 = 0
        var hits: UInt64 = 0
        var random: SplitMix64
    }

    private struct State {
        var rules: [Armed] = []
        var calls: [FaultRule.Target: UInt64] = [:]
        /// Supplier descriptor → its pool's name, for rules naming a pool.
        var pools: [Int32: String] = [:]
    }

    private let enabled = Atomic<Bool>(false)
    private let state = Mutex(State())

    public init() {}

    /// Turns the seam on (debug builds only) with `rules`.
    public func enable(rules: [FaultRule]) throws(RemapError) {
        guard Self.isAvailable else {
            throw .invalidArgument("fault injection is only available in debug builds")
        }
        enabled.store(true, ordering: .releasing)
        setRules(rules)
    }

    public var isEnabled: Bool { enabled.load(ordering: .relaxed) }

    /// Replaces the rules; counts start again.
    public func setRules(_ rules: [FaultRule]) {
        state.withLock { state in
            state.rules = rules.map { Armed(rule: $0, random: SplitMix64(seed: $0.seed)) }
        }
    }

    /// The rules with their hits, and the calls seen per seam.
    public var snapshot: FaultState {
        state.withLock { state in
            FaultState(rules: state.rules.map { FaultState.Entry(rule: $0.rule, hits: $0.hits) },
                       calls: Dictionary(uniqueKeysWithValues: state.calls.map { ($0.key.rawValue, $0.value) }))
        }
    }

    /// Remembers which pool supplier descriptor `fd` belongs to.
    func register(fd: Int32, pool: String) {
        guard isEnabled else { return }
        state.withLock { $0.pools[fd] = pool }
    }

    /// The fault for one call to `target` on supplier `fd` (nil for a
    /// metadata commit), or nil to let it through.
    func fault(_ target: FaultRule.Target, fd: Int32? = nil) -> Fault? {
        guard isEnabled else { return nil }
        return state.withLock { state -> Fault? in
            state.calls[target, default: 0] += 1
            let pool = fd.flatMap { state.pools[$0] }
            for index in state.rules.indices where state.rules[index].rule.target == target {
                let rule = state.rules[index].rule
                if let wanted = rule.pool, wanted != pool { continue }
                state.rules[index].seen += 1
                guard state.rules[index].seen > rule.after else { continue }
                if let count = rule.count, state.rules[index].hits >= count { continue }
                if rule.probability < 1, state.rules[index].random.nextUnit() >= rule.probability { continue }
                state.rules[index].hits += 1
                switch rule.error {
                case .eio: return .fail(EIO)
                case .enospc: return .fail(ENOSPC)
                case .short: return target == .supplierRead || target == .supplierWrite ? .short : .fail(EIO)
                case .delay: return .delay(rule.delayMs)
                }
            }
            return nil
        }
    }

    /// For blocking calls: sleeps out a delay; returns the errno to fail
    /// with, or 0 to go on.
    func blockingFault(_ target: FaultRule.Target, fd: Int32? = nil) -> Int32 {
        switch fault(target, fd: fd) {
        case nil, .short: return 0
        case .fail(let error): return error
        case .delay(let milliseconds):
            usleep(UInt32(milliseconds * 1000))
            return 0
        }
    }
}
