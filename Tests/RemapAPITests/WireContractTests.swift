import Foundation
@testable import RemapAPI
@testable import RemapCore
import RemapWire
import Testing

/// What remapd encodes, remapctl's types (RemapWire) decode: the daemon's
/// records and the client's view of them are two types, so this is where a
/// renamed or retyped member shows up before any daemon runs.
@Suite struct WireContractTests {
    private func sent<Value: Encodable>(_ value: Value) -> [UInt8] {
        Router.json(200, value).body
    }

    private func read<Value: Decodable>(_ type: Value.Type, _ body: [UInt8]) throws -> Value {
        try JSONDecoder().decode(type, from: Data(body))
    }

    private let supplier = SupplierInfo(id: "s1", kind: "file", path: "/p/a.img", sizeBytes: 1 << 30, preallocated: true,
                                        state: "failed", error: "fdatasync: EIO")

    @Test func pools() throws {
        let info = PoolInfo(name: "fast", chunkSizeBytes: 65536, capacityBytes: 1 << 30, allocatedBytes: 1 << 20,
                            reservedBytes: 2 << 20, freeBytes: (1 << 30) - (3 << 20), provisionedBytes: 2 << 30,
                            onNoSpace: .queue(seconds: 30), lowSpaceThresholds: [80, 90], overcommitRatio: 2,
                            volumeCount: 3, suppliers: [supplier], state: .degraded, stateReason: "a supplier failed")
        let pool = try read(PoolList<RemapWire.Pool>.self, sent(PoolList(pools: [info]))).pools[0]
        #expect((pool.name, pool.chunkSizeBytes, pool.capacityBytes, pool.allocatedBytes, pool.reservedBytes, pool.freeBytes)
            == ("fast", 65536, 1 << 30, 1 << 20, 2 << 20, (1 << 30) - (3 << 20)))
        #expect((pool.provisionedBytes, pool.overcommitRatio, pool.volumeCount) == (2 << 30, 2, 3))
        #expect(pool.onNoSpace == .queue(seconds: 30) && pool.lowSpaceThresholds == [80, 90])
        #expect(pool.state == "degraded" && pool.stateReason == "a supplier failed")
        let wire = try #require(pool.suppliers.first)
        #expect((wire.id, wire.kind, wire.path, wire.sizeBytes) == ("s1", "file", "/p/a.img", 1 << 30))
        #expect(wire.preallocated == true && wire.state == "failed" && wire.error == "fdatasync: EIO")
        var erroring = info
        erroring.onNoSpace = .error
        #expect(try read(RemapWire.Pool.self, sent(erroring)).onNoSpace == .error)
    }

    @Test func volumes() throws {
        let info = VolumeInfo(id: "v-1", name: "vm1", pool: "default", sizeBytes: 1 << 30, allocatedBytes: 65536,
                              reservedBytes: 4096, guaranteedWritableBytes: 8192, createdAt: "2025-01-02T03:04:05Z",
                              exportName: "vm1", labels: ["app": "db"], originSnapshot: "s-1")
        let page = try read(VolumeList<RemapWire.Volume>.self, sent(VolumeList(volumes: [info], nextPageToken: "766d31")))
        #expect(page.nextPageToken == "766d31")
        let volume = try #require(page.volumes.first)
        #expect((volume.id, volume.name, volume.pool, volume.sizeBytes, volume.allocatedBytes, volume.createdAt)
            == ("v-1", "vm1", "default", 1 << 30, 65536, "2025-01-02T03:04:05Z"))
        #expect((volume.exportName, volume.labels, volume.reservedBytes, volume.guaranteedWritableBytes, volume.originSnapshot)
            == ("vm1", ["app": "db"], 4096, 8192, "s-1"))
        #expect(try read(VolumeList<RemapWire.Volume>.self, sent(VolumeList(volumes: [info], nextPageToken: nil)))
            .nextPageToken == nil)
    }

    @Test func snapshots_and_their_changes() throws {
        let info = SnapshotInfo(id: "s-1", name: "mon", volume: "vm1", pool: "default", sizeBytes: 1 << 30,
                                createdAt: "2025-01-02T03:04:05Z", exportName: "vm1@mon", uniqueBytes: 1, sharedBytes: 2,
                                reservedBytes: 3)
        let snapshot = try #require(try read(SnapshotList<RemapWire.Snapshot>.self, sent(SnapshotList(snapshots: [info])))
            .snapshots.first)
        #expect((snapshot.id, snapshot.address, snapshot.pool, snapshot.sizeBytes, snapshot.createdAt, snapshot.exportName)
            == ("s-1", "vm1@mon", "default", 1 << 30, "2025-01-02T03:04:05Z", "vm1@mon"))
        #expect((snapshot.uniqueBytes, snapshot.sharedBytes, snapshot.reservedBytes) == (1, 2, 3))

        let changes = RemapCore.SnapshotChanges(snapshot: "s-2", base: nil, sizeBytes: 1 << 20, granularityBytes: 65536,
                                                changedBytes: 65536, ranges: [.init(offsetBytes: 0, lengthBytes: 65536)])
        let wire = try read(RemapWire.SnapshotChanges.self, sent(changes))
        #expect((wire.snapshot, wire.base, wire.sizeBytes, wire.granularityBytes, wire.changedBytes)
            == ("s-2", nil, 1 << 20, 65536, 65536))
        #expect(wire.ranges == [RemapWire.ByteRange(offsetBytes: 0, lengthBytes: 65536)])
    }

    @Test func reservations_and_exports() throws {
        let info = ReservationInfo(id: "r-1", volume: "vm1", name: "backup", kind: "range", bytes: 131072, usedBytes: 65536,
                                   offsetBytes: 0, lengthBytes: 131072, expiresAt: "2025-01-02T03:04:05Z", ttlSeconds: 60)
        let reservation = try #require(
            try read(ReservationList<RemapWire.Reservation>.self, sent(ReservationList(reservations: [info]))).reservations.first)
        #expect((reservation.id, reservation.volume, reservation.name, reservation.kind, reservation.bytes, reservation.usedBytes)
            == ("r-1", "vm1", "backup", "range", 131072, 65536))
        #expect((reservation.offsetBytes, reservation.lengthBytes, reservation.expiresAt, reservation.ttlSeconds)
            == (0, 131072, "2025-01-02T03:04:05Z", 60))

        let export = ExportInfo(name: "vm1+r-1", volume: "vm1", reservation: "r-1")
        let wire = try read(ExportList<RemapWire.Export>.self, sent(ExportList(exports: [export]))).exports
        #expect(wire.map { [$0.name, $0.volume, $0.reservation] } == [["vm1+r-1", "vm1", "r-1"]])
    }

    @Test func events() throws {
        let info = RemapCore.Event(seq: 7, time: "2025-01-02T03:04:05Z", type: .poolLowSpace, pool: "default",
                                   volume: "vm1", reservation: "r-1", offsetBytes: 4096, percent: 90, detail: "90% committed")
        let list = try read(EventList<RemapWire.Event>.self, sent(EventList(events: [info], lastSeq: 7)))
        #expect(list.lastSeq == 7)
        let event = try #require(list.events.first)
        #expect((event.seq, event.time, event.type) == (7, "2025-01-02T03:04:05Z", "pool.low-space"))
        #expect(event.pool == "default" && event.volume == "vm1" && event.reservation == "r-1")
        #expect(event.offsetBytes == 4096 && event.percent == 90 && event.detail == "90% committed")
    }

    @Test func operations_carry_their_problem() throws {
        let info = OperationInfo(id: "o-1", kind: "import", state: .failed, volume: "vm1", source: "/p/vm1.raw",
                                 totalBytes: 100, doneBytes: 50, progress: 0.5, createdAt: "2025-01-02T03:04:05Z",
                                 finishedAt: "2025-01-02T03:04:06Z",
                                 failure: .noSpace(requestedBytes: 2, availableBytes: 1))
        let operation = try #require(
            try read(OperationList<RemapWire.Operation>.self, sent(OperationList(operations: [OperationBody(info)])))
                .operations.first)
        #expect((operation.id, operation.kind, operation.state, operation.volume, operation.source)
            == ("o-1", "import", "failed", "vm1", "/p/vm1.raw"))
        #expect((operation.totalBytes, operation.doneBytes, operation.progress) == (100, 50, 0.5))
        #expect((operation.createdAt, operation.finishedAt, operation.hasFailed, operation.hasEnded)
            == ("2025-01-02T03:04:05Z", "2025-01-02T03:04:06Z", true, true))
        let problem = try #require(operation.error)
        #expect((problem.code, problem.status, problem.requestedBytes, problem.availableBytes)
            == ("insufficient-space", 507, 2, 1))
    }

    /// These documents are written out in the spec; the bytes stay as they were.
    @Test func small_documents_keep_their_bytes() {
        #expect(String(decoding: sent(Health(status: "ok")), as: UTF8.self) == "{\"status\":\"ok\"}\n")
        #expect(String(decoding: sent(ServerVersion(version: "0.1.0", api: "v1", engine: "threads")), as: UTF8.self)
            == "{\"api\":\"v1\",\"engine\":\"threads\",\"version\":\"0.1.0\"}\n")
        #expect(String(decoding: sent(EventList<RemapCore.Event>(events: [], lastSeq: 0)), as: UTF8.self)
            == "{\"events\":[],\"lastSeq\":0}\n")
        #expect(String(decoding: Router.problem(Problem(.inUse, detail: "busy")).body, as: UTF8.self)
            == "{\"code\":\"in-use\",\"detail\":\"busy\",\"status\":409,\"title\":\"In use\",\"type\":\"urn:remap:problem:in-use\"}\n")
    }
}
