import RemapCore

/// Where a front end finds the images it serves, by export name. With
/// `VolumeIO` it is all a front end may use of the engine (the NBD code is
/// held to that: see NBD/NBDServer.swift). Engine thread only.
protocol ExportDirectory: AnyObject {
    /// Every export: volumes, extra exports (`VOLUME+ID`), snapshots
    /// (`VOLUME@SNAPSHOT`); sorted.
    var exportNames: [String] { get }
    /// The export `name`, for I/O; nil when there is none, or while its
    /// volume is being imported.
    func export(named name: String) -> VolumeIO?
}

extension Engine: ExportDirectory {}

/// The volume I/O surface: everything a front end — NBD, imports, content
/// streams, the file export to come — does with the data of a volume or
/// snapshot (an *image*), and all it may use of the engine's data path.
/// A front end translates its protocol to these calls and their errors
/// back, in one table (NBD: `RemapError.nbdError` in NBDProtocol.swift).
///
/// One is made per image a front end serves (`ExportDirectory.export(named:)`,
/// or the engine's own `volumeIO(for:)` for imports and content streams)
/// and kept while it serves it; calls on it allocate nothing of their own,
/// so it sits on the hot path at the cost of a direct call.
///
/// - Threads: engine thread only. Every call is made there and every
///   completion runs there, exactly once, later or before the call returns.
/// - Buffers: `data` belongs to the caller; `owner` keeps it alive until the
///   completion has run.
/// - Ranges: the caller keeps each request inside the image
///   (`offset + length <= sizeBytes`, `length > 0`) and writes, zeroes and
///   flushes only an image that is not read-only.
/// - Errors: one type, `RemapError`. `.noSpace`: what the request must
///   allocate finds no space (in its reservations or the pool). `.io(errno:)`:
///   the pool cannot do I/O (degraded, offline), a supplier failed, or the
///   metadata commit behind a flush or FUA failed — with ENOSPC when the host
///   filesystem under a sparse supplier is full, and EOPNOTSUPP when a fast
///   zero would have to write zeros.
final class VolumeIO {
    private unowned let engine: Engine
    private let volume: Volume
    /// The pooled reservation writes draw on first (an export bound to one).
    private let reservation: String?
    /// The name the image was opened by: a volume's, an extra export's
    /// (`VOLUME+ID`) or a snapshot's (`VOLUME@SNAPSHOT`).
    let name: String

    init(engine: Engine, volume: Volume, name: String, reservation: String?) {
        self.engine = engine
        self.volume = volume
        self.name = name
        self.reservation = reservation
    }

    /// The image's size now (a volume may grow while it is served).
    var sizeBytes: UInt64 { volume.sizeBytes }
    /// Snapshots are read-only.
    var isReadOnly: Bool { volume.isSnapshot }
    /// The image's own export name: `VOLUME`, or `VOLUME@SNAPSHOT`.
    var imageName: String { volume.exportName }
    var poolName: String { volume.pool.name }

    /// Pins the image while a front end serves it: a volume cannot be
    /// deleted or shrunk, nor an extra export deleted, until `detach`.
    func attach() { engine.attach(volume, exportName: name) }

    func detach() { engine.detach(volume, exportName: name) }

    /// Reads `length` bytes at `offset` into `data`. The segments say which
    /// parts are holes (read as zeros without I/O).
    func read(offset: UInt64, length: Int, into data: UnsafeMutableRawPointer, owner: AnyObject,
              completion: @escaping (Result<[IOSegment], RemapError>) -> Void) {
        engine.readData(volume, offset: offset, length: length, data: data, owner: owner, completion: completion)
    }

    /// Writes `length` bytes from `data` at `offset`; with `fua`, completes
    /// once they are durable (as after a `flush`).
    func write(offset: UInt64, length: Int, from data: UnsafeMutableRawPointer, owner: AnyObject, fua: Bool,
               completion: @escaping (Result<Void, RemapError>) -> Void) {
        engine.writeData(volume, offset: offset, length: length, data: data, owner: owner, bound: reservation, fua: fua,
                         completion: completion)
    }

    /// Makes `length` bytes at `offset` read zeros. `mayTrim`: whole chunks
    /// may be unmapped, their space given back (NBD TRIM, WRITE_ZEROES).
    /// `noHole`: the range stays or becomes backed instead — holes get
    /// chunks, or the request fails with `.noSpace` (NBD NO_HOLE, a real
    /// fallocate); it wins over `mayTrim`. `fastZero`: fail with EOPNOTSUPP
    /// rather than write zeros. `fua`: complete once durable.
    func zero(offset: UInt64, length: Int, mayTrim: Bool, fua: Bool, fastZero: Bool, noHole: Bool,
              completion: @escaping (Result<Void, RemapError>) -> Void) {
        engine.zeroData(volume, offset: offset, length: length, mayTrim: mayTrim, noHole: noHole, fastZero: fastZero,
                        fua: fua, bound: reservation, completion: completion)
    }

    /// Makes every write completed before it durable: the pool's suppliers
    /// are synced, then the metadata committed.
    func flush(completion: @escaping (Result<Void, RemapError>) -> Void) {
        engine.flush(volume, completion)
    }

    /// The range as runs of mapped (data) and unmapped (hole, reads zeros)
    /// bytes, in order, at most `maximumRuns` of them (the last may end
    /// before the range does).
    func extents(offset: UInt64, length: UInt64, maximumRuns: Int) -> [(length: UInt64, mapped: Bool)] {
        engine.assertEngineThread()
        return volume.allocationRuns(offset: offset, length: length, maximumRuns: maximumRuns)
    }
}
