import Synchronization
import RemapCore

/// Operations by id, newest last; shared by the import threads and the
/// control plane. Keeps the last 100 finished ones. A caller can wait for
/// one to end (`waitForEnd`): every change wakes it.
public final class OperationLog: Sendable {
    private let entries = ConditionLock<[OperationInfo]>([])
    /// Running operations asked to stop.
    private let cancelled = Mutex<Set<String>>([])

    func add(_ operation: OperationInfo) {
        entries.withLock { list in
            list.append(operation)
            let finished = list.filter { $0.state != .running }
            if finished.count > 100, let oldest = finished.first {
                list.removeAll { $0.id == oldest.id }
            }
        }
    }

    func update(_ id: String, _ change: (inout OperationInfo) -> Void) {
        entries.withLock { list in
            if let index = list.firstIndex(where: { $0.id == id }) { change(&list[index]) }
        }
    }

    public func all() -> [OperationInfo] { entries.withLock { Array($0.reversed()) } }

    func requestCancel(_ id: String) { _ = cancelled.withLock { $0.insert(id) } }

    func isCancelled(_ id: String) -> Bool { cancelled.withLock { $0.contains(id) } }

    func forget(_ id: String) {
        entries.withLock { list in list.removeAll { $0.id == id } }
        _ = cancelled.withLock { $0.remove(id) }
    }

    public func find(_ id: String) -> OperationInfo? { entries.withLock { list in list.first { $0.id == id } } }

    /// Operation `id` once it is no longer running, waiting for that up to
    /// `timeoutNanoseconds`; nil if it is still running then.
    func waitForEnd(_ id: String, timeoutNanoseconds: Int64) -> OperationInfo? {
        entries.wait(timeoutNanoseconds: timeoutNanoseconds) { list in
            list.first { $0.id == id && $0.state != .running }
        }
    }
}
