import Glibc
import RemapCore

/// Reading a state directory's metadata for `remapd check`, which must
/// never change it.
extension MetadataStore: MappingLayers {
    /// Opens an existing metadata database for reading only: nothing is
    /// created, migrated or written, and no checkpoint folds the WAL into
    /// the database. With a -wal file (a daemon was killed) SQLite reads
    /// through it and keeps its reader marks in the -shm file, as any
    /// reader does. Without one (a clean stop) everything is in the
    /// database file, which is opened immutable so that no empty -wal and
    /// -shm are left behind. The caller makes sure no remapd is running
    /// (it holds the state directory's lock).
    public convenience init(readingOnly path: String) throws(RemapError) {
        let checkpointed = access(path + "-wal", F_OK) != 0
        let database = try SQLiteDatabase(path: path, readOnly: true, immutable: checkpointed)
        try database.execute("PRAGMA query_only=ON")
        self.init(path: path, connection: database)
    }

    /// Everything the checker needs but the mapping rows (it streams those
    /// through `forEachMapping`) and the suppliers' probes.
    public func checkInput() throws(RemapError) -> MetadataCheck.Input {
        MetadataCheck.Input(
            pools: try pools(), volumes: try volumes(), snapshots: try snapshots(), layerParents: try layerParents(),
            reservations: try reservations(), exports: try exports(), dirtyChunks: try dirtyChunks())
    }

    public func mappingRowCounts() throws(RemapError) -> [Int64: UInt64] {
        try locked { (database) throws(RemapError) in
            var counts: [Int64: UInt64] = [:]
            try database.run("SELECT volume, COUNT(*) FROM mappings GROUP BY volume") { row in
                counts[row.integer(0)] = UInt64(row.integer(1))
            }
            return counts
        }
    }

    /// Values the readers above cannot take (they would trap on a negative
    /// size or chunk number, or refuse an unknown supplier kind): when there
    /// are any, nothing else can be checked.
    public func unreadableValues() throws(RemapError) -> [MetadataFinding] {
        let rules: [(table: String, condition: String)] = [
            ("pools", "chunk_size < 0"),
            ("suppliers", "size_bytes < 0 OR kind NOT IN ('file', 'block')"),
            ("segments", "first_chunk < 0 OR supplier_offset < 0 OR chunks < 0"),
            ("volumes", "size_bytes < 0"),
            ("snapshots", "size_bytes < 0"),
            ("reservations", "first_chunk < 0 OR chunk_count < 0 OR remaining < 0 OR ttl_seconds < 0"),
            ("mappings", "virtual_chunk < 0 OR physical_chunk < -1"),
            ("dirty_chunks", "physical_chunk < 0"),
        ]
        return try locked { (database) throws(RemapError) in
            var findings: [MetadataFinding] = []
            for rule in rules {
                var count: Int64 = 0
                try database.run("SELECT COUNT(*) FROM \(rule.table) WHERE \(rule.condition)") { row in count = row.integer(0) }
                if count > 0 {
                    findings.append(MetadataFinding(kind: .badValue, detail: "table \(rule.table) has rows with \(rule.condition)",
                                                    count: UInt64(count)))
                }
            }
            return findings
        }
    }
}
