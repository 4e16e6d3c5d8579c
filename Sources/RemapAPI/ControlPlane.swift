import RemapCore

/// What the REST API needs from the daemon. The daemon's engine provides
/// it; every call may block (it waits for the engine and, for changes, for
/// the metadata commit) and is made from libmicrohttpd's threads.
public protocol ControlPlane: Sendable {
    /// Which data-path engine runs ("io_uring" or "threads").
    var engineName: String { get }
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
}

/// remap's version, reported by `GET /v1/version`.
public let remapVersion = "0.1.0"
