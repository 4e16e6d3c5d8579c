import Dispatch
import Glibc
import RemapCore
@testable import RemapEngine
import Testing

/// Who may run what: the engine thread owns the engine's state; other
/// threads wait for it without polling.
@Suite struct EngineThreadTests {
    /// In a debug build `call()` from the engine thread traps at once: it
    /// would wait for the thread that is waiting (a silent deadlock).
    @Test func call_from_the_engine_thread_traps() async {
        let exit = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let fixture = try EngineFixture()
            let engine = fixture.engine
            let answered = DispatchSemaphore(value: 0)
            engine.post {
                _ = engine.poolInfos()
                answered.signal()
            }
            _ = answered.wait(timeout: .now() + 10)
            // Not reached when the call trapped; a deadlock ends here too, as a success.
        }
        let message = String(decoding: exit?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("call() from the engine thread would wait for itself for ever"))
    }

    /// Engine-thread-only methods trap on another thread once it runs.
    @Test func engine_state_touched_from_another_thread_traps() async {
        let exit = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let fixture = try EngineFixture()
            _ = fixture.engine.exportNames
        }
        let message = String(decoding: exit?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.contains("exportNames runs only on the engine thread"))
    }

    @Test func the_engine_thread_owns_its_state_and_others_do_not() throws {
        let fixture = try EngineFixture()
        let engine = fixture.engine
        #expect(!engine.owner.isCurrent)
        let onEngineThread: Bool = try engine.call { reply in reply(.success(engine.owner.isCurrent)) }
        #expect(onEngineThread)
    }

    @Test func a_condition_wait_ends_when_the_value_changes_or_times_out() {
        let lock = ConditionLock(0)
        let started = monotonicNanoseconds()
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) { lock.withLock { $0 = 7 } }
        let seen = lock.wait(timeoutNanoseconds: 10_000_000_000) { $0 == 7 ? $0 : nil }
        #expect(seen == 7)
        #expect(monotonicNanoseconds() - started < 5_000_000_000)
        let nothing = lock.wait(timeoutNanoseconds: 20_000_000) { $0 == 8 ? $0 : nil }
        #expect(nothing == nil)
    }

    @Test func event_watchers_are_woken_by_each_event_until_they_stop() {
        let log = EventLog()
        let woken = DispatchSemaphore(value: 0)
        let stop = log.watch { woken.signal() }
        log.record(.poolGrown, pool: "p", detail: "one")
        #expect(woken.wait(timeout: .now()) == .success)
        stop()
        log.record(.poolGrown, pool: "p", detail: "two")
        #expect(woken.wait(timeout: .now() + .milliseconds(20)) == .timedOut)
    }

    @Test func a_cancelled_operation_is_answered_as_soon_as_it_ends() {
        let operations = OperationLog()
        operations.add(OperationInfo(id: "o", kind: "import", state: .running, volume: "v", source: "/x", totalBytes: 1,
                                     doneBytes: 0, progress: 0, createdAt: "now"))
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) {
            operations.update("o") { $0.state = .cancelled }
        }
        let started = monotonicNanoseconds()
        #expect(operations.waitForEnd("o", timeoutNanoseconds: 10_000_000_000)?.state == .cancelled)
        #expect(monotonicNanoseconds() - started < 5_000_000_000)
        #expect(operations.waitForEnd("missing", timeoutNanoseconds: 10_000_000) == nil)
    }
}
