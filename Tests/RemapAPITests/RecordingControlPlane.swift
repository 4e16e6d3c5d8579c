@testable import RemapAPI
import RemapCore
import Synchronization

/// A control plane that holds no pools, volumes or snapshots but writes
/// down every call that names one, so a test sees which entry point a route
/// reached and with which decoded names. Lookups answer not-found.
final class RecordingControlPlane: ControlPlane {
    let faultInjection: Bool
    private let log = Mutex<[String]>([])

    init(faultInjection: Bool = false) {
        self.faultInjection = faultInjection
    }

    /// The calls made so far, as `name arguments…`.
    var calls: [String] { log.withLock { $0 } }

    private func record(_ call: String, _ arguments: String...) {
        log.withLock { $0.append(([call] + arguments).joined(separator: " ")) }
    }

    private func missing(_ call: String, _ kind: String, _ name: String, _ more: String...) -> RemapError {
        log.withLock { $0.append(([call, name] + more).joined(separator: " ")) }
        return .notFound(kind: kind, name: name)
    }

    var engineName: String { "recording" }
    var limits: Limits { Limits() }
    func poolInfos() -> [PoolInfo] { [] }
    func poolInfo(named name: String) throws(RemapError) -> PoolInfo { throw missing("poolInfo", "pool", name) }
    func createPool(_ spec: PoolSpec) throws(RemapError) -> (PoolInfo, created: Bool) { throw missing("createPool", "pool", spec.name) }
    func deletePool(named name: String) throws(RemapError) { record("deletePool", name) }
    func addSupplier(toPool name: String, _ spec: SupplierSpec) throws(RemapError) -> PoolInfo {
        throw missing("addSupplier", "pool", name)
    }
    func volumeInfos() -> [VolumeInfo] { [] }
    func volumeInfo(named name: String) throws(RemapError) -> VolumeInfo { throw missing("volumeInfo", "volume", name) }
    func createVolume(_ spec: VolumeSpec) throws(RemapError) -> (VolumeInfo, created: Bool) {
        throw missing("createVolume", "pool", spec.pool)
    }
    func updateVolume(named name: String, _ patch: VolumePatch) throws(RemapError) -> VolumeInfo {
        throw missing("updateVolume", "volume", name, patch.allowShrink ? "allowShrink" : "")
    }
    func deleteVolume(named name: String) throws(RemapError) { record("deleteVolume", name) }
    func dataPathStatistics() -> DataPathStatistics { DataPathStatistics() }
    func updatePool(named name: String, onNoSpace: NoSpacePolicy?, thresholds: [Int]?) throws(RemapError) -> PoolInfo {
        throw missing("updatePool", "pool", name)
    }
    func growSupplier(pool name: String, supplier id: String, to sizeBytes: UInt64) throws(RemapError) -> PoolInfo {
        throw missing("growSupplier", "pool", name, id)
    }
    func createReservation(volume name: String, _ spec: ReservationSpec) throws(RemapError) -> (ReservationInfo, created: Bool) {
        throw missing("createReservation", "volume", name)
    }
    func reservationInfos(volume name: String) throws(RemapError) -> [ReservationInfo] {
        record("reservationInfos", name)
        return []
    }
    func reservationInfo(volume name: String, id: String) throws(RemapError) -> ReservationInfo {
        throw missing("reservationInfo", "reservation", name, id)
    }
    func deleteReservation(volume name: String, id: String) throws(RemapError) { record("deleteReservation", name, id) }
    func renewReservation(volume name: String, id: String, ttlSeconds: UInt64?) throws(RemapError) -> ReservationInfo {
        throw missing("renewReservation", "reservation", name, id)
    }
    func exportInfos() -> [ExportInfo] { [] }
    func createExport(volume name: String, reservation: String?, exportName: String?) throws(RemapError) -> ExportInfo {
        throw missing("createExport", "volume", name)
    }
    func deleteExport(named name: String) throws(RemapError) { record("deleteExport", name) }
    func events(after seq: UInt64) -> (events: [Event], last: UInt64) {
        record("events", String(seq))
        return ([], seq)
    }
    func createSnapshot(volume name: String, snapshot snapshotName: String) throws(RemapError) -> (SnapshotInfo, created: Bool) {
        throw missing("createSnapshot", "volume", name, snapshotName)
    }
    func snapshotInfos(volume name: String?) throws(RemapError) -> [SnapshotInfo] {
        record("snapshotInfos", name ?? "*")
        return []
    }
    func snapshotInfo(_ reference: String) throws(RemapError) -> SnapshotInfo { throw missing("snapshotInfo", "snapshot", reference) }
    func deleteSnapshot(_ reference: String) throws(RemapError) { record("deleteSnapshot", reference) }
    func cloneSnapshot(_ reference: String, name: String, labels: [String: String]) throws(RemapError) -> (VolumeInfo, created: Bool) {
        throw missing("cloneSnapshot", "snapshot", reference, name)
    }
    func revertVolume(_ name: String, to reference: String) throws(RemapError) -> VolumeInfo {
        throw missing("revertVolume", "volume", name, reference)
    }
    func snapshotChanges(_ reference: String, base baseReference: String?) throws(RemapError) -> SnapshotChanges {
        throw missing("snapshotChanges", "snapshot", reference, baseReference ?? "-")
    }
    func beginSnapshotRead(_ reference: String) throws(RemapError) -> (id: String, sizeBytes: UInt64) {
        throw missing("beginSnapshotRead", "snapshot", reference)
    }
    func endSnapshotRead(_ id: String) {}
    func readSnapshot(_ id: String, offset: UInt64, length: Int, into data: UnsafeMutableRawPointer) throws(RemapError) {
        throw .notFound(kind: "snapshot", name: id)
    }
    func importVolume(_ spec: VolumeSpec, sizeGiven: Bool, from path: String) throws(RemapError) -> (OperationInfo, VolumeInfo) {
        throw missing("importVolume", "pool", spec.pool)
    }
    func operationInfos() -> [OperationInfo] { [] }
    func operationInfo(_ id: String) throws(RemapError) -> OperationInfo { throw missing("operationInfo", "operation", id) }
    func cancelOperation(_ id: String) throws(RemapError) -> OperationInfo? {
        record("cancelOperation", id)
        return nil
    }
    func checkPool(named name: String) throws(RemapError) -> PoolCheck { throw missing("checkPool", "pool", name) }
    func clearPoolErrors(named name: String) throws(RemapError) -> PoolInfo { throw missing("clearPoolErrors", "pool", name) }
    func faultState() -> FaultState? { faultInjection ? FaultState(rules: [], calls: [:]) : nil }
    func setFaultRules(_ rules: [FaultRule]) throws(RemapError) -> FaultState {
        record("setFaultRules", String(rules.count))
        return FaultState(rules: [], calls: [:])
    }
}
