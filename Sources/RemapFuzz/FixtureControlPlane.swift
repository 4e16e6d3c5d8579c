import Foundation
import RemapAPI
import RemapCore

/// The control plane behind the REST target: nothing in it can fail or
/// change, so what a request reaches is the router's own parsing. Lookups
/// and changes answer not-found; the volume list holds a few fixed volumes
/// (for the label filter and page tokens); snapshot `N` (a number) exists
/// with N bytes, so a content request reaches the Range header's parser;
/// fault injection is on, so its rules are decoded.
struct FixtureControlPlane: ControlPlane {
    static let volumes: [VolumeInfo] = ["a", "b-1", "c.2", "d_3", "é"].enumerated().map { index, name in
        let labels = index % 2 == 0 ? #"{"app": "db", "tier": "\#(index)"}"# : #"{"app": "web"}"#
        let json = #"""
            {"id": "\#(index)", "name": "\#(name)", "pool": "\#(index < 3 ? "default" : "fast")", "sizeBytes": 1048576,
             "allocatedBytes": 0, "reservedBytes": 0, "guaranteedWritableBytes": 0, "createdAt": "2026-01-01T00:00:00Z",
             "exportName": "\#(name)", "labels": \#(labels)}
            """#
        // invariant: the literal above is a VolumeInfo
        return try! JSONDecoder().decode(VolumeInfo.self, from: Data(json.utf8))
    }

    private func absent(_ kind: String, _ name: String) -> RemapError { .notFound(kind: kind, name: name) }

    var engineName: String { "fuzz" }
    var limits: Limits { Limits() }
    func poolInfos() -> [PoolInfo] { [] }
    func poolInfo(named name: String) throws(RemapError) -> PoolInfo { throw absent("pool", name) }
    func createPool(_ spec: PoolSpec) throws(RemapError) -> (PoolInfo, created: Bool) { throw absent("pool", spec.name) }
    func deletePool(named name: String) throws(RemapError) { throw absent("pool", name) }
    func addSupplier(toPool name: String, _ spec: SupplierSpec) throws(RemapError) -> PoolInfo { throw absent("pool", name) }
    func volumeInfos() -> [VolumeInfo] { Self.volumes }
    func volumeInfo(named name: String) throws(RemapError) -> VolumeInfo { throw absent("volume", name) }
    func createVolume(_ spec: VolumeSpec) throws(RemapError) -> (VolumeInfo, created: Bool) { throw absent("pool", spec.pool) }
    func updateVolume(named name: String, _ patch: VolumePatch) throws(RemapError) -> VolumeInfo { throw absent("volume", name) }
    func deleteVolume(named name: String) throws(RemapError) { throw absent("volume", name) }
    func dataPathStatistics() -> DataPathStatistics { DataPathStatistics() }
    func updatePool(named name: String, onNoSpace: NoSpacePolicy?, thresholds: [Int]?) throws(RemapError) -> PoolInfo {
        throw absent("pool", name)
    }
    func growSupplier(pool name: String, supplier id: String, to sizeBytes: UInt64) throws(RemapError) -> PoolInfo {
        throw absent("pool", name)
    }
    func createReservation(volume name: String, _ spec: ReservationSpec) throws(RemapError) -> (ReservationInfo, created: Bool) {
        throw absent("volume", name)
    }
    func reservationInfos(volume name: String) throws(RemapError) -> [ReservationInfo] { throw absent("volume", name) }
    func reservationInfo(volume name: String, id: String) throws(RemapError) -> ReservationInfo { throw absent("volume", name) }
    func deleteReservation(volume name: String, id: String) throws(RemapError) { throw absent("volume", name) }
    func renewReservation(volume name: String, id: String, ttlSeconds: UInt64?) throws(RemapError) -> ReservationInfo {
        throw absent("volume", name)
    }
    func exportInfos() -> [ExportInfo] { [] }
    func createExport(volume name: String, reservation: String?, exportName: String?) throws(RemapError) -> ExportInfo {
        throw absent("volume", name)
    }
    func deleteExport(named name: String) throws(RemapError) { throw absent("export", name) }
    func events(after seq: UInt64) -> (events: [Event], last: UInt64) { ([], 0) }
    func createSnapshot(volume name: String, snapshot snapshotName: String) throws(RemapError) -> (SnapshotInfo, created: Bool) {
        throw absent("volume", name)
    }
    func snapshotInfos(volume name: String?) throws(RemapError) -> [SnapshotInfo] {
        guard let name else { return [] }
        throw absent("volume", name)
    }
    func snapshotInfo(_ reference: String) throws(RemapError) -> SnapshotInfo { throw absent("snapshot", reference) }
    func deleteSnapshot(_ reference: String) throws(RemapError) { throw absent("snapshot", reference) }
    func cloneSnapshot(_ reference: String, name: String, labels: [String: String]) throws(RemapError) -> (VolumeInfo, created: Bool) {
        throw absent("snapshot", reference)
    }
    func revertVolume(_ name: String, to reference: String) throws(RemapError) -> VolumeInfo { throw absent("volume", name) }
    func snapshotChanges(_ reference: String, base baseReference: String?) throws(RemapError) -> SnapshotChanges {
        throw absent("snapshot", reference)
    }
    func beginSnapshotRead(_ reference: String) throws(RemapError) -> (id: String, sizeBytes: UInt64) {
        guard let size = UInt64(reference) else { throw absent("snapshot", reference) }
        return (reference, size)
    }
    func endSnapshotRead(_ id: String) {}
    func readSnapshot(_ id: String, offset: UInt64, length: Int, into data: UnsafeMutableRawPointer) throws(RemapError) {
        data.initializeMemory(as: UInt8.self, repeating: 0, count: length)
    }
    func importVolume(_ spec: VolumeSpec, sizeGiven: Bool, from path: String) throws(RemapError) -> (OperationInfo, VolumeInfo) {
        throw absent("pool", spec.pool)
    }
    func operationInfos() -> [OperationInfo] { [] }
    func operationInfo(_ id: String) throws(RemapError) -> OperationInfo { throw absent("operation", id) }
    func cancelOperation(_ id: String) throws(RemapError) -> OperationInfo? { throw absent("operation", id) }
    func checkPool(named name: String) throws(RemapError) -> PoolCheck { throw absent("pool", name) }
    func clearPoolErrors(named name: String) throws(RemapError) -> PoolInfo { throw absent("pool", name) }
    func faultState() -> FaultState? { FaultState(rules: [], calls: [:]) }
    func setFaultRules(_ rules: [FaultRule]) throws(RemapError) -> FaultState {
        FaultState(rules: rules.map { FaultState.Entry(rule: $0, hits: 0) }, calls: [:])
    }
}
