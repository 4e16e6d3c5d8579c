import RemapCore
import Synchronization

/// Crash-safe persistence of pools, suppliers, volumes and chunk mappings in
/// SQLite (WAL, synchronous=FULL: a returned `apply` is durable).
///
/// The free space of a pool is not stored: it is what no mapping points at,
/// derived at load. Freed chunks that may hold old data are stored as
/// "dirty" until zeroed, so isolation survives a crash.
public final class MetadataStore: @unchecked Sendable {  // the connection is only used under `lock`
    private let lock = Mutex(())
    private let connection: SQLiteDatabase
    public let path: String

    public init(path: String) throws(RemapError) {
        self.path = path
        let database = try SQLiteDatabase(path: path)
        try database.execute("PRAGMA journal_mode=WAL")
        try database.execute("PRAGMA synchronous=FULL")
        try database.execute("PRAGMA foreign_keys=ON")
        try database.execute(Self.schema)
        try Self.migrate(database)
        self.connection = database
    }

    /// A store on a connection its caller set up (see `init(readingOnly:)`).
    init(path: String, connection: SQLiteDatabase) {
        self.path = path
        self.connection = connection
    }

    static let schema = """
        CREATE TABLE IF NOT EXISTS pools(
            name TEXT PRIMARY KEY,
            chunk_size INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS suppliers(
            id TEXT PRIMARY KEY,
            pool TEXT NOT NULL REFERENCES pools(name),
            ordinal INTEGER NOT NULL,
            kind TEXT NOT NULL,
            path TEXT NOT NULL,
            size_bytes INTEGER NOT NULL,
            preallocated INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS volumes(
            key INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL UNIQUE,
            pool TEXT NOT NULL REFERENCES pools(name),
            size_bytes INTEGER NOT NULL,
            created_at TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS mappings(
            volume INTEGER NOT NULL,
            virtual_chunk INTEGER NOT NULL,
            physical_chunk INTEGER NOT NULL,
            PRIMARY KEY(volume, virtual_chunk)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS volume_labels(
            volume INTEGER NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY(volume, key)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS segments(
            pool TEXT NOT NULL,
            first_chunk INTEGER NOT NULL,
            supplier TEXT NOT NULL,
            supplier_offset INTEGER NOT NULL,
            chunks INTEGER NOT NULL,
            PRIMARY KEY(pool, first_chunk)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS reservations(
            id TEXT PRIMARY KEY,
            volume INTEGER NOT NULL,
            name TEXT,
            first_chunk INTEGER,
            chunk_count INTEGER NOT NULL,
            remaining INTEGER NOT NULL,
            role TEXT NOT NULL,
            ttl_seconds INTEGER,
            expires_at INTEGER);
        CREATE TABLE IF NOT EXISTS exports(
            name TEXT PRIMARY KEY,
            volume INTEGER NOT NULL,
            reservation TEXT);
        CREATE TABLE IF NOT EXISTS layers(
            key INTEGER PRIMARY KEY,
            parent INTEGER);
        CREATE TABLE IF NOT EXISTS snapshots(
            key INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            volume_key INTEGER NOT NULL,
            volume_name TEXT NOT NULL,
            pool TEXT NOT NULL,
            layer INTEGER NOT NULL,
            size_bytes INTEGER NOT NULL,
            created_at TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS dirty_chunks(
            pool TEXT NOT NULL,
            physical_chunk INTEGER NOT NULL,
            PRIMARY KEY(pool, physical_chunk)) WITHOUT ROWID;
        """

    func locked<T>(_ body: (SQLiteDatabase) throws(RemapError) -> T) throws(RemapError) -> T {
        try lock.withLock { (_) throws(RemapError) -> T in try body(connection) }
    }

    /// Columns added after the first release, for state directories made
    /// by it.
    static func migrate(_ database: SQLiteDatabase) throws(RemapError) {
        func columns(_ table: String) throws(RemapError) -> Set<String> {
            var names = Set<String>()
            try database.run("SELECT name FROM pragma_table_info('\(table)')") { row in names.insert(row.text(0)) }
            return names
        }
        if !(try columns("mappings")).contains("unwritten") {
            try database.execute("ALTER TABLE mappings ADD COLUMN unwritten INTEGER NOT NULL DEFAULT 0")
        }
        let volumeColumns = try columns("volumes")
        if !volumeColumns.contains("layer") {
            try database.execute("ALTER TABLE volumes ADD COLUMN layer INTEGER")
        }
        if !volumeColumns.contains("origin_snapshot") {
            try database.execute("ALTER TABLE volumes ADD COLUMN origin_snapshot TEXT")
        }
        let pools = try columns("pools")
        if !pools.contains("queue_seconds") {
            try database.execute("ALTER TABLE pools ADD COLUMN queue_seconds INTEGER NOT NULL DEFAULT 0")
        }
        if !pools.contains("thresholds") {
            try database.execute("ALTER TABLE pools ADD COLUMN thresholds TEXT NOT NULL DEFAULT '80,90,95'")
        }
    }

    /// Applies `changes` as one durable transaction.
    public func apply(_ changes: [MetadataChange]) throws(RemapError) {
        guard !changes.isEmpty else { return }
        try locked { (database) throws(RemapError) in
            try database.execute("BEGIN IMMEDIATE")
            do throws(RemapError) {
                for change in changes { try Self.apply(change, to: database) }
                try database.execute("COMMIT")
            } catch {
                try? database.execute("ROLLBACK")
                throw error
            }
        }
    }

    private static func apply(_ change: MetadataChange, to database: SQLiteDatabase) throws(RemapError) {
        switch change {
        case .createPool(let name, let chunkSize):
            try database.run("INSERT INTO pools(name, chunk_size) VALUES(?, ?)", [.text(name), .integer(Int64(chunkSize))])
        case .deletePool(let name):
            try database.run("DELETE FROM dirty_chunks WHERE pool = ?", [.text(name)])
            try database.run("DELETE FROM segments WHERE pool = ?", [.text(name)])
            try database.run("DELETE FROM suppliers WHERE pool = ?", [.text(name)])
            try database.run("DELETE FROM pools WHERE name = ?", [.text(name)])
        case .addSupplier(let pool, let ordinal, let supplier):
            try database.run(
                "INSERT INTO suppliers(id, pool, ordinal, kind, path, size_bytes, preallocated) VALUES(?, ?, ?, ?, ?, ?, ?)",
                [.text(supplier.id), .text(pool), .integer(Int64(ordinal)), .text(supplier.kind.rawValue),
                 .text(supplier.path), .integer(Int64(supplier.sizeBytes)), .integer(supplier.preallocated ? 1 : 0)])
        case .addSegment(let pool, let segment):
            try database.run(
                "INSERT INTO segments(pool, first_chunk, supplier, supplier_offset, chunks) VALUES(?, ?, ?, ?, ?)",
                [.text(pool), .integer(Int64(segment.firstChunk)), .text(segment.supplierID),
                 .integer(Int64(segment.supplierOffset)), .integer(Int64(segment.chunks))])
        case .setSupplierSize(let id, let size):
            try database.run("UPDATE suppliers SET size_bytes = ? WHERE id = ?", [.integer(Int64(size)), .text(id)])
        case .setPoolSettings(let name, let queueSeconds, let thresholds):
            try database.run("UPDATE pools SET queue_seconds = ?, thresholds = ? WHERE name = ?",
                             [.integer(Int64(queueSeconds)), .text(thresholds.map(String.init).joined(separator: ",")), .text(name)])
        case .reserveChunk(let volume, let virtual, let physical):
            try database.run(
                "INSERT OR REPLACE INTO mappings(volume, virtual_chunk, physical_chunk, unwritten) VALUES(?, ?, ?, 1)",
                [.integer(volume), .integer(Int64(virtual)), .integer(Int64(physical))])
        case .markWritten(let volume, let virtual):
            try database.run("UPDATE mappings SET unwritten = 0 WHERE volume = ? AND virtual_chunk = ?",
                             [.integer(volume), .integer(Int64(virtual))])
        case .createReservation(let r):
            try database.run(
                "INSERT INTO reservations(id, volume, name, first_chunk, chunk_count, remaining, role, ttl_seconds, expires_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [.text(r.id), .integer(r.volume), r.name.map { .text($0) } ?? .null, r.firstChunk.map { .integer(Int64($0)) } ?? .null,
                 .integer(Int64(r.chunkCount)), .integer(Int64(r.remaining)), .text(r.role),
                 r.ttlSeconds.map { .integer(Int64($0)) } ?? .null, r.expiresAt.map { .integer($0) } ?? .null])
        case .deleteReservation(let id):
            try database.run("DELETE FROM reservations WHERE id = ?", [.text(id)])
            try database.run("UPDATE exports SET reservation = NULL WHERE reservation = ?", [.text(id)])
        case .setReservationRemaining(let id, let remaining):
            try database.run("UPDATE reservations SET remaining = ? WHERE id = ?", [.integer(Int64(remaining)), .text(id)])
        case .setReservationExpiry(let id, let expiresAt, let ttl):
            try database.run("UPDATE reservations SET expires_at = ?, ttl_seconds = ? WHERE id = ?",
                             [expiresAt.map { .integer($0) } ?? .null, ttl.map { .integer(Int64($0)) } ?? .null, .text(id)])
        case .resizeReservation(let id, let chunkCount):
            try database.run("UPDATE reservations SET chunk_count = ? WHERE id = ?", [.integer(Int64(chunkCount)), .text(id)])
        case .createExport(let name, let volume, let reservation):
            try database.run("INSERT INTO exports(name, volume, reservation) VALUES(?, ?, ?)",
                             [.text(name), .integer(volume), reservation.map { .text($0) } ?? .null])
        case .deleteExport(let name):
            try database.run("DELETE FROM exports WHERE name = ?", [.text(name)])
        case .createVolume(let volume):
            try database.run(
                "INSERT INTO volumes(key, id, name, pool, size_bytes, created_at, layer, origin_snapshot) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                [.integer(volume.key), .text(volume.id), .text(volume.name), .text(volume.pool),
                 .integer(Int64(volume.sizeBytes)), .text(volume.createdAt), .integer(volume.layer),
                 volume.originSnapshot.map { .text($0) } ?? .null])
            try apply(.setLabels(volume: volume.key, labels: volume.labels), to: database)
        case .deleteVolume(let key):
            // Its mapping layers go with .deleteLayer/.foldLayer changes of their own.
            try database.run("DELETE FROM volume_labels WHERE volume = ?", [.integer(key)])
            try database.run("DELETE FROM reservations WHERE volume = ?", [.integer(key)])
            try database.run("DELETE FROM exports WHERE volume = ?", [.integer(key)])
            try database.run("DELETE FROM volumes WHERE key = ?", [.integer(key)])
        case .resizeVolume(let key, let size):
            // The chunks cut off by a shrink come as .unmap changes of their own.
            try database.run("UPDATE volumes SET size_bytes = ? WHERE key = ?", [.integer(Int64(size)), .integer(key)])
        case .setLabels(let volume, let labels):
            try database.run("DELETE FROM volume_labels WHERE volume = ?", [.integer(volume)])
            for (key, value) in labels.sorted(by: { $0.key < $1.key }) {
                try database.run("INSERT INTO volume_labels(volume, key, value) VALUES(?, ?, ?)",
                                 [.integer(volume), .text(key), .text(value)])
            }
        case .map(let volume, let virtual, let physical):
            try database.run(
                "INSERT OR REPLACE INTO mappings(volume, virtual_chunk, physical_chunk) VALUES(?, ?, ?)",
                [.integer(volume), .integer(Int64(virtual)), .integer(Int64(physical))])
        case .unmap(let volume, let virtual):
            try database.run(
                "DELETE FROM mappings WHERE volume = ? AND virtual_chunk = ?", [.integer(volume), .integer(Int64(virtual))])
        case .createLayer(let key, let parent):
            try database.run("INSERT INTO layers(key, parent) VALUES(?, ?)", [.integer(key), parent.map { .integer($0) } ?? .null])
        case .setVolumeLayer(let volume, let layer):
            try database.run("UPDATE volumes SET layer = ? WHERE key = ?", [.integer(layer), .integer(volume)])
        case .tombstone(let layer, let virtual):
            try database.run(
                "INSERT OR REPLACE INTO mappings(volume, virtual_chunk, physical_chunk, unwritten) VALUES(?, ?, -1, 0)",
                [.integer(layer), .integer(Int64(virtual))])
        case .moveUnwritten(let from, let to, let tombstone):
            try database.run(
                "INSERT OR REPLACE INTO mappings(volume, virtual_chunk, physical_chunk, unwritten) SELECT ?, virtual_chunk, physical_chunk, 1 FROM mappings WHERE volume = ? AND unwritten = 1",
                [.integer(to), .integer(from)])
            if tombstone {
                try database.run("UPDATE mappings SET physical_chunk = -1, unwritten = 0 WHERE volume = ? AND unwritten = 1", [.integer(from)])
            } else {
                try database.run("DELETE FROM mappings WHERE volume = ? AND unwritten = 1", [.integer(from)])
            }
        case .deleteLayer(let key):
            try database.run("DELETE FROM mappings WHERE volume = ?", [.integer(key)])
            try database.run("DELETE FROM layers WHERE key = ?", [.integer(key)])
        case .foldLayer(let child, let parent):
            try database.run(
                "INSERT OR REPLACE INTO mappings(volume, virtual_chunk, physical_chunk, unwritten) SELECT ?, virtual_chunk, physical_chunk, unwritten FROM mappings WHERE volume = ?",
                [.integer(parent), .integer(child)])
            try database.run("DELETE FROM mappings WHERE volume = ?", [.integer(child)])
            try database.run("UPDATE layers SET parent = ? WHERE parent = ?", [.integer(parent), .integer(child)])
            try database.run("DELETE FROM layers WHERE key = ?", [.integer(child)])
            try database.run("UPDATE volumes SET layer = ? WHERE layer = ?", [.integer(parent), .integer(child)])
            try database.run("UPDATE snapshots SET layer = ? WHERE layer = ?", [.integer(parent), .integer(child)])
            var grandparent = false
            try database.run("SELECT 1 FROM layers WHERE key = ? AND parent IS NOT NULL", [.integer(parent)]) { _ in grandparent = true }
            if !grandparent {
                // Nothing below any more: tombstones hide nothing.
                try database.run("DELETE FROM mappings WHERE volume = ? AND physical_chunk = -1", [.integer(parent)])
            }
        case .createSnapshot(let snapshot):
            try database.run(
                "INSERT INTO snapshots(key, id, name, volume_key, volume_name, pool, layer, size_bytes, created_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [.integer(snapshot.key), .text(snapshot.id), .text(snapshot.name), .integer(snapshot.volumeKey),
                 .text(snapshot.volumeName), .text(snapshot.pool), .integer(snapshot.layer),
                 .integer(Int64(snapshot.sizeBytes)), .text(snapshot.createdAt)])
        case .deleteSnapshot(let key):
            try database.run("DELETE FROM exports WHERE volume = ?", [.integer(key)])
            try database.run("DELETE FROM snapshots WHERE key = ?", [.integer(key)])
        case .markDirty(let pool, let physical):
            try database.run(
                "INSERT OR IGNORE INTO dirty_chunks(pool, physical_chunk) VALUES(?, ?)", [.text(pool), .integer(Int64(physical))])
        case .clearDirty(let pool, let physical):
            try database.run(
                "DELETE FROM dirty_chunks WHERE pool = ? AND physical_chunk = ?", [.text(pool), .integer(Int64(physical))])
        case .markDirtyChunks(let pool, let chunks):
            for physical in chunks { try apply(.markDirty(pool: pool, physicalChunk: physical), to: database) }
        case .clearDirtyChunks(let pool, let chunks):
            for physical in chunks { try apply(.clearDirty(pool: pool, physicalChunk: physical), to: database) }
        }
    }

    public func pools() throws(RemapError) -> [StoredPool] {
        try locked { (database) throws(RemapError) in
            var pools: [StoredPool] = []
            try database.run("SELECT name, chunk_size, queue_seconds, thresholds FROM pools ORDER BY name") { row in
                pools.append(StoredPool(
                    name: row.text(0), chunkSize: UInt64(row.integer(1)), suppliers: [], segments: [],
                    queueSeconds: Int(row.integer(2)),
                    thresholds: row.text(3).split(separator: ",").compactMap { Int($0) }))
            }
            for index in pools.indices {
                try database.run(
                    "SELECT id, kind, path, size_bytes, preallocated FROM suppliers WHERE pool = ? ORDER BY ordinal",
                    [.text(pools[index].name)]
                ) { (row) throws(RemapError) in
                    guard let kind = Supplier.Kind(rawValue: row.text(1)) else {
                        throw .internal("metadata: unknown supplier kind '\(row.text(1))'")
                    }
                    pools[index].suppliers.append(
                        Supplier(id: row.text(0), kind: kind, path: row.text(2),
                                 sizeBytes: UInt64(row.integer(3)), preallocated: row.integer(4) != 0))
                }
            }
            for index in pools.indices {
                try database.run(
                    "SELECT first_chunk, supplier, supplier_offset, chunks FROM segments WHERE pool = ? ORDER BY first_chunk",
                    [.text(pools[index].name)]
                ) { row in
                    pools[index].segments.append(StoredSegment(
                        firstChunk: UInt64(row.integer(0)), supplierID: row.text(1),
                        supplierOffset: UInt64(row.integer(2)), chunks: UInt64(row.integer(3))))
                }
            }
            return pools
        }
    }

    public func reservations() throws(RemapError) -> [StoredReservation] {
        try locked { (database) throws(RemapError) in
            var list: [StoredReservation] = []
            try database.run(
                "SELECT id, volume, name, first_chunk, chunk_count, remaining, role, ttl_seconds, expires_at FROM reservations ORDER BY rowid"
            ) { row in
                list.append(StoredReservation(
                    id: row.text(0), volume: row.integer(1), name: row.optionalText(2),
                    firstChunk: row.optionalInteger(3).map(UInt64.init), chunkCount: UInt64(row.integer(4)),
                    remaining: UInt64(row.integer(5)), role: row.text(6),
                    ttlSeconds: row.optionalInteger(7).map(UInt64.init), expiresAt: row.optionalInteger(8)))
            }
            return list
        }
    }

    public func exports() throws(RemapError) -> [StoredExport] {
        try locked { (database) throws(RemapError) in
            var list: [StoredExport] = []
            try database.run("SELECT name, volume, reservation FROM exports ORDER BY name") { row in
                list.append(StoredExport(name: row.text(0), volume: row.integer(1), reservation: row.optionalText(2)))
            }
            return list
        }
    }

    public func volumes() throws(RemapError) -> [StoredVolume] {
        try locked { (database) throws(RemapError) in
            var volumes: [StoredVolume] = []
            try database.run(
                "SELECT key, id, name, pool, size_bytes, created_at, layer, origin_snapshot FROM volumes ORDER BY key"
            ) { row in
                volumes.append(StoredVolume(
                    key: row.integer(0), id: row.text(1), name: row.text(2), pool: row.text(3),
                    sizeBytes: UInt64(row.integer(4)), createdAt: row.text(5), layer: row.optionalInteger(6),
                    originSnapshot: row.optionalText(7)))
            }
            var index: [Int64: Int] = [:]
            for (position, volume) in volumes.enumerated() { index[volume.key] = position }
            try database.run("SELECT volume, key, value FROM volume_labels") { row in
                if let position = index[row.integer(0)] { volumes[position].labels[row.text(1)] = row.text(2) }
            }
            return volumes
        }
    }

    /// Streams the rows of one mapping layer in chunk order: `physical` nil
    /// is a tombstone (a hole hiding the layers below); `unwritten` marks
    /// chunks a range reservation backs but nobody wrote.
    public func forEachMapping(
        layer: Int64,
        _ body: (_ virtual: UInt64, _ physical: UInt64?, _ unwritten: Bool) throws(RemapError) -> Void
    ) throws(RemapError) {
        try locked { (database) throws(RemapError) in
            try database.run(
                "SELECT virtual_chunk, physical_chunk, unwritten FROM mappings WHERE volume = ? ORDER BY virtual_chunk",
                [.integer(layer)]
            ) { (row) throws(RemapError) in
                let physical = row.integer(1)
                try body(UInt64(row.integer(0)), physical < 0 ? nil : UInt64(physical), row.integer(2) != 0)
            }
        }
    }

    /// The largest layer key that has mapping rows (from the primary key's
    /// b-tree: no scan), or nil when there are none.
    public func largestMappedLayer() throws(RemapError) -> Int64? {
        try locked { (database) throws(RemapError) in
            var key: Int64?
            try database.run("SELECT MAX(volume) FROM mappings") { row in key = row.optionalInteger(0) }
            return key
        }
    }

    /// Layer key → parent layer key (absent: a root layer).
    public func layerParents() throws(RemapError) -> [Int64: Int64?] {
        try locked { (database) throws(RemapError) in
            var parents: [Int64: Int64?] = [:]
            try database.run("SELECT key, parent FROM layers") { row in parents[row.integer(0)] = row.optionalInteger(1) }
            return parents
        }
    }

    public func snapshots() throws(RemapError) -> [StoredSnapshot] {
        try locked { (database) throws(RemapError) in
            var list: [StoredSnapshot] = []
            try database.run(
                "SELECT key, id, name, volume_key, volume_name, pool, layer, size_bytes, created_at FROM snapshots ORDER BY key"
            ) { row in
                list.append(StoredSnapshot(
                    key: row.integer(0), id: row.text(1), name: row.text(2), volumeKey: row.integer(3),
                    volumeName: row.text(4), pool: row.text(5), layer: row.integer(6),
                    sizeBytes: UInt64(row.integer(7)), createdAt: row.text(8)))
            }
            return list
        }
    }

    /// Chunks freed but perhaps not yet zeroed, by pool.
    public func dirtyChunks() throws(RemapError) -> [String: [UInt64]] {
        try locked { (database) throws(RemapError) in
            var dirty: [String: [UInt64]] = [:]
            try database.run("SELECT pool, physical_chunk FROM dirty_chunks ORDER BY pool, physical_chunk") { row in
                dirty[row.text(0), default: []].append(UInt64(row.integer(1)))
            }
            return dirty
        }
    }
}
