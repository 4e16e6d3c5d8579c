import RemapCore

/// What the REST API needs from the daemon. The daemon's engine provides
/// it; every call may block (it waits for the engine and, for changes, for
/// the metadata commit) and is made from libmicrohttpd's threads.
public protocol ControlPlane: Sendable {
    /// Which data-path engine runs ("io_uring" or "threads").
    var engineName: String { get }
    /// The bounds in force (`GET /v1/limits`).
    var limits: Limits { get }
    func poolInfos() -> [PoolInfo]
    func poolInfo(named name: String) throws(RemapError) -> PoolInfo
    /// Durable when it returns; `created` is false when an identical pool existed.
    func createPool(_ spec: PoolSpec) throws(RemapError) -> (PoolInfo, created: Bool)
    func deletePool(named name: String) throws(RemapError)
    func addSupplier(toPool name: String, _ spec: SupplierSpec) throws(RemapError) -> PoolInfo
    func volumeInfos() -> [VolumeInfo]
    func volumeInfo(named name: String) throws(RemapError) -> VolumeInfo
    /// Durable when it returns; `created` is false when an identical volume existed.
    func createVolume(_ spec: VolumeSpec) throws(RemapError) -> (VolumeInfo, created: Bool)
    func updateVolume(named name: String, _ patch: VolumePatch) throws(RemapError) -> VolumeInfo
    func deleteVolume(named name: String) throws(RemapError)
    func dataPathStatistics() -> DataPathStatistics

    func updatePool(named name: String, onNoSpace: NoSpacePolicy?, thresholds: [Int]?) throws(RemapError) -> PoolInfo
    func growSupplier(pool name: String, supplier id: String, to sizeBytes: UInt64) throws(RemapError) -> PoolInfo

    /// Durable when it returns; `created` is false when one of that name and spec existed.
    func createReservation(volume name: String, _ spec: ReservationSpec) throws(RemapError) -> (ReservationInfo, created: Bool)
    func reservationInfos(volume name: String) throws(RemapError) -> [ReservationInfo]
    func reservationInfo(volume name: String, id: String) throws(RemapError) -> ReservationInfo
    func deleteReservation(volume name: String, id: String) throws(RemapError)
    func renewReservation(volume name: String, id: String, ttlSeconds: UInt64?) throws(RemapError) -> ReservationInfo

    func exportInfos() -> [ExportInfo]
    func createExport(volume name: String, reservation: String?, exportName: String?) throws(RemapError) -> ExportInfo
    func deleteExport(named name: String) throws(RemapError)

    /// Events after `seq` (oldest first) and the newest event's number.
    func events(after seq: UInt64) -> (events: [Event], last: UInt64)
    /// Calls `wake` (quickly: it may run on the engine thread) after each
    /// new event until the function returned is called, so event streams
    /// wait instead of polling. The default never calls it.
    func watchEvents(_ wake: @escaping @Sendable () -> Void) -> @Sendable () -> Void

    // Snapshots and clones: a snapshot is named by its id or `VOLUME@NAME`.
    func createSnapshot(volume name: String, snapshot snapshotName: String) throws(RemapError) -> (SnapshotInfo, created: Bool)
    /// All snapshots, or those of one volume; oldest first.
    func snapshotInfos(volume name: String?) throws(RemapError) -> [SnapshotInfo]
    func snapshotInfo(_ reference: String) throws(RemapError) -> SnapshotInfo
    func deleteSnapshot(_ reference: String) throws(RemapError)
    func cloneSnapshot(_ reference: String, name: String, labels: [String: String]) throws(RemapError) -> (VolumeInfo, created: Bool)
    func revertVolume(_ name: String, to reference: String) throws(RemapError) -> VolumeInfo
    func snapshotChanges(_ reference: String, base baseReference: String?) throws(RemapError) -> SnapshotChanges
    /// Pins a snapshot for reading its content; returns its id and size.
    func beginSnapshotRead(_ reference: String) throws(RemapError) -> (id: String, sizeBytes: UInt64)
    func endSnapshotRead(_ id: String)
    /// Reads into caller-owned memory; blocks.
    func readSnapshot(_ id: String, offset: UInt64, length: Int, into data: UnsafeMutableRawPointer) throws(RemapError)

    /// Starts an import of a raw file into a new volume.
    func importVolume(_ spec: VolumeSpec, sizeGiven: Bool, from path: String) throws(RemapError) -> (OperationInfo, VolumeInfo)
    /// Newest first.
    func operationInfos() -> [OperationInfo]
    func operationInfo(_ id: String) throws(RemapError) -> OperationInfo
    /// Cancels a running operation (answers it as it ended) or forgets a finished one (nil).
    func cancelOperation(_ id: String) throws(RemapError) -> OperationInfo?
    func checkPool(named name: String) throws(RemapError) -> PoolCheck
    /// Checks a degraded or offline pool's suppliers again; online if they pass.
    func clearPoolErrors(named name: String) throws(RemapError) -> PoolInfo

    /// Fault injection (debug builds started with `--fault-injection`): the
    /// rules and counts, or nil when it is off (its routes are then 404).
    func faultState() -> FaultState?
    func setFaultRules(_ rules: [FaultRule]) throws(RemapError) -> FaultState
}

/// remap's version, reported by `GET /v1/version`.
public let remapVersion = "0.1.0"
