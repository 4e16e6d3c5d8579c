import Glibc
import RemapCore
@testable import RemapEngine
import Testing

/// The volume I/O surface every front end uses, driven as a front end
/// does: on the engine thread, through `ExportDirectory` and `VolumeIO`.
@Suite struct VolumeIOTests {
    static let chunk = Int(EngineFixture.chunkSize)

    @Test func writes_read_back_and_extents_follow_zeroing() throws {
        let fixture = try EngineFixture()
        _ = try fixture.engine.createVolume(VolumeSpec(name: "v", sizeBytes: 1 << 20, pool: "p"))
        let data = SharedBuffer(count: Self.chunk, filledWith: 0xa5)
        try fixture.withExport("v") { io, reply in
            io.write(offset: 0, length: Self.chunk, from: data.buffer.pointer, owner: data.buffer, fua: true) { reply($0) }
        }
        let back = SharedBuffer(count: 2 * Self.chunk, filledWith: 0xff)
        let segments: [IOSegment] = try fixture.withExport("v") { io, reply in
            io.read(offset: 0, length: 2 * Self.chunk, into: back.buffer.pointer, owner: back.buffer) { reply($0) }
        }
        #expect(back.bytes == [UInt8](repeating: 0xa5, count: Self.chunk) + [UInt8](repeating: 0, count: Self.chunk))
        #expect(segments.map { $0.target == .zeros } == [false, true])
        #expect(try extents(fixture, "v") == [Run(length: UInt64(Self.chunk), mapped: true), Run(length: 15 * UInt64(Self.chunk), mapped: false)])

        // TRIM: the chunk goes back.
        try fixture.withExport("v") { io, reply in
            io.zero(offset: 0, length: Self.chunk, mayTrim: true, fua: false, fastZero: false, noHole: false) { reply($0) }
        }
        #expect(try extents(fixture, "v") == [Run(length: 1 << 20, mapped: false)])

        // NO_HOLE: the range is backed and reads zeros.
        try fixture.withExport("v") { io, reply in
            io.zero(offset: 0, length: 2 * Self.chunk, mayTrim: true, fua: true, fastZero: false, noHole: true) { reply($0) }
        }
        #expect(try extents(fixture, "v").first == Run(length: 2 * UInt64(Self.chunk), mapped: true))
        let zeros = SharedBuffer(count: 2 * Self.chunk, filledWith: 0xff)
        _ = try fixture.withExport("v") { (io, reply: @escaping @Sendable (Result<[IOSegment], RemapError>) -> Void) in
            io.read(offset: 0, length: 2 * Self.chunk, into: zeros.buffer.pointer, owner: zeros.buffer) { reply($0) }
        }
        #expect(zeros.bytes == [UInt8](repeating: 0, count: 2 * Self.chunk))
        try fixture.withExport("v") { io, reply in io.flush { reply($0) } }
    }

    @Test func a_snapshot_is_read_only_and_an_unknown_export_is_nil() throws {
        let fixture = try EngineFixture()
        _ = try fixture.engine.createVolume(VolumeSpec(name: "v", sizeBytes: 1 << 20, pool: "p"))
        _ = try fixture.engine.createSnapshot(volume: "v", snapshot: "s")
        let engine = fixture.engine
        let flags: [Bool] = try engine.call { reply in
            reply(.success([engine.export(named: "v")?.isReadOnly, engine.export(named: "v@s")?.isReadOnly,
                            engine.export(named: "nothing").map { _ in true }].map { $0 ?? false }))
        }
        #expect(flags == [false, true, false])
        let names: [String] = try engine.call { reply in reply(.success(engine.exportNames)) }
        #expect(names == ["v", "v@s"])
    }

    @Test func what_finds_no_space_fails_with_noSpace() throws {
        let fixture = try EngineFixture(chunks: 4)
        _ = try fixture.engine.createVolume(VolumeSpec(name: "v", sizeBytes: 1 << 20, pool: "p"))
        let result: Result<Void, RemapError> = try fixture.withExport("v") { io, reply in
            io.zero(offset: 0, length: 1 << 20, mayTrim: false, fua: false, fastZero: false, noHole: true) { reply(.success($0)) }
        }
        guard case .failure(let error) = result, case .noSpace = error else {
            Issue.record("a NO_HOLE zero of 16 chunks in a pool of 4 answered \(result)")
            return
        }
        #expect(error.nbdError == .noSpace)
    }

    struct Run: Equatable {
        var length: UInt64
        var mapped: Bool
    }

    private func extents(_ fixture: EngineFixture, _ name: String) throws -> [Run] {
        try fixture.withExport(name) { io, reply in
            reply(.success(io.extents(offset: 0, length: io.sizeBytes, maximumRuns: 16).map { Run(length: $0.length, mapped: $0.mapped) }))
        }
    }
}

/// The one table from remap's errors to NBD's (NBDProtocol.swift).
@Suite struct NBDErrorTableTests {
    @Test func space_fast_zero_and_io_failures_map_to_their_nbd_errors() {
        #expect(RemapError.noSpace(requestedBytes: 1, availableBytes: 0).nbdError == .noSpace)
        #expect(RemapError.io(errno: ENOSPC, context: "host filesystem full").nbdError == .noSpace)
        #expect(RemapError.io(errno: EOPNOTSUPP, context: "the supplier cannot zero quickly").nbdError == .notSupported)
        #expect(RemapError.io(errno: EIO, context: "zeroing").nbdError == .io)
        #expect(RemapError.invalidArgument("bad").nbdError == .invalid)
        #expect(RemapError.inUse("busy").nbdError == .permission)
    }
}
