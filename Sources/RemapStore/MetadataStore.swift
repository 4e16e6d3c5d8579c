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
        self.connection = database
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
        CREATE TABLE IF NOT EXISTS dirty_chunks(
            pool TEXT NOT NULL,
            physical_chunk INTEGER NOT NULL,
            PRIMARY KEY(pool, physical_chunk)) WITHOUT ROWID;
        """

    private func locked<T>(_ body: (SQLiteDatabase) throws(RemapError) -> T) throws(RemapError) -> T {
        try lock.withLock { (_) throws(RemapError) -> T in try body(connection) }
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
            try database.run("DELETE FROM suppliers WHERE pool = ?", [.text(name)])
            try database.run("DELETE FROM pools WHERE name = ?", [.text(name)])
        case .addSupplier(let pool, let ordinal, let supplier):
            try database.run(
                "INSERT INTO suppliers(id, pool, ordinal, kind, path, size_bytes, preallocated) VALUES(?, ?, ?, ?, ?, ?, ?)",
                [.text(supplier.id), .text(pool), .integer(Int64(ordinal)), .text(supplier.kind.rawValue),
                 .text(supplier.path), .integer(Int64(supplier.sizeBytes)), .integer(supplier.preallocated ? 1 : 0)])
        case .createVolume(let volume):
            try database.run(
                "INSERT INTO volumes(key, id, name, pool, size_bytes, created_at) VALUES(?, ?, ?, ?, ?, ?)",
                [.integer(volume.key), .text(volume.id), .text(volume.name), .text(volume.pool),
                 .integer(Int64(volume.sizeBytes)), .text(volume.createdAt)])
            try apply(.setLabels(volume: volume.key, labels: volume.labels), to: database)
        case .deleteVolume(let key):
            try database.run("DELETE FROM mappings WHERE volume = ?", [.integer(key)])
            try database.run("DELETE FROM volume_labels WHERE volume = ?", [.integer(key)])
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
        case .markDirty(let pool, let physical):
            try database.run(
                "INSERT OR IGNORE INTO dirty_chunks(pool, physical_chunk) VALUES(?, ?)", [.text(pool), .integer(Int64(physical))])
        case .clearDirty(let pool, let physical):
            try database.run(
                "DELETE FROM dirty_chunks WHERE pool = ? AND physical_chunk = ?", [.text(pool), .integer(Int64(physical))])
        }
    }

    public func pools() throws(RemapError) -> [StoredPool] {
        try locked { (database) throws(RemapError) in
            var pools: [StoredPool] = []
            try database.run("SELECT name, chunk_size FROM pools ORDER BY name") { row in
                pools.append(StoredPool(name: row.text(0), chunkSize: UInt64(row.integer(1)), suppliers: []))
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
            return pools
        }
    }

    public func volumes() throws(RemapError) -> [StoredVolume] {
        try locked { (database) throws(RemapError) in
            var volumes: [StoredVolume] = []
            try database.run("SELECT key, id, name, pool, size_bytes, created_at FROM volumes ORDER BY key") { row in
                volumes.append(StoredVolume(
                    key: row.integer(0), id: row.text(1), name: row.text(2), pool: row.text(3),
                    sizeBytes: UInt64(row.integer(4)), createdAt: row.text(5)))
            }
            var index: [Int64: Int] = [:]
            for (position, volume) in volumes.enumerated() { index[volume.key] = position }
            try database.run("SELECT volume, key, value FROM volume_labels") { row in
                if let position = index[row.integer(0)] { volumes[position].labels[row.text(1)] = row.text(2) }
            }
            return volumes
        }
    }

    /// Streams every mapping of every volume, ordered by volume then chunk.
    public func forEachMapping(_ body: (_ volume: Int64, _ virtual: UInt64, _ physical: UInt64) throws(RemapError) -> Void) throws(RemapError) {
        try locked { (database) throws(RemapError) in
            try database.run("SELECT volume, virtual_chunk, physical_chunk FROM mappings ORDER BY volume, virtual_chunk") { (row) throws(RemapError) in
                try body(row.integer(0), UInt64(row.integer(1)), UInt64(row.integer(2)))
            }
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
