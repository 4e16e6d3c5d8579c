import RemapCore

/// What the REST API needs from the daemon. The daemon's engine provides
/// it; every call may block (it waits for the engine and, for changes, for
/// the metadata commit) and is made from libmicrohttpd's threads.
public protocol ControlPlane: Sendable {
    /// Which data-path engine runs ("io_uring" or "threads").
    var engineName: String { get }
    func poolInfos() -> [PoolInfo]
    func poolInfo(named name: String) throws(RemapError) -> PoolInfo
    func volumeInfos() -> [VolumeInfo]
    func volumeInfo(named name: String) throws(RemapError) -> VolumeInfo
    /// Durable when it returns; `created` is false when an identical volume existed.
    func createVolume(_ spec: VolumeSpec) throws(RemapError) -> (VolumeInfo, created: Bool)
    func deleteVolume(named name: String) throws(RemapError)
}

/// remap's version, reported by `GET /v1/version`.
public let remapVersion = "0.1.0"
