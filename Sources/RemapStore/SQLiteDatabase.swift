internal import CSQLite
import Glibc
import RemapCore

/// One SQLite connection. Not thread-safe: its owner serialises access.
final class SQLiteDatabase {
    private var handle: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]

    /// `readOnly` opens an existing database without ever writing it;
    /// `immutable` (read-only) also skips locking and the -wal and -shm
    /// files: only for a database no one can be writing.
    init(path: String, readOnly: Bool = false, immutable: Bool = false) throws(RemapError) {
        var flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        var name = path
        if !readOnly { try Self.makePrivate(path) }
        if readOnly {
            flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX
            if immutable {
                flags |= SQLITE_OPEN_URI
                name = "file:" + Self.uriEscaped(path) + "?immutable=1"
            }
        }
        let rc = sqlite3_open_v2(name, &handle, flags, nil)
        guard rc == SQLITE_OK else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(handle)
            throw .io(errno: rc, context: "opening metadata database \(path): \(message)")
        }
        sqlite3_busy_timeout(handle, 5000)
    }

    /// The database and its WAL hold every volume's map: mode 0600 whatever
    /// the umask. Creates the file (SQLite then gives -wal and -shm the
    /// database's mode) or tightens one an older remapd left more open.
    private static func makePrivate(_ path: String) throws(RemapError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw .io(errno: errno, context: "opening metadata database \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        guard fchmod(fd, 0o600) == 0 else {
            throw .io(errno: errno, context: "making metadata database \(path) private: \(String(cString: strerror(errno)))")
        }
        for suffix in ["-wal", "-shm", "-journal"] where chmod(path + suffix, 0o600) != 0 && errno != ENOENT {
            throw .io(errno: errno, context: "making \(path + suffix) private: \(String(cString: strerror(errno)))")
        }
    }

    /// A path as the path part of an SQLite URI: `%`, `?` and `#` escaped.
    private static func uriEscaped(_ path: String) -> String {
        let escapes: [Character: String] = ["%": "%25", "?": "%3f", "#": "%23"]
        return path.map { escapes[$0] ?? String($0) }.joined()
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close(handle)
    }

    func execute(_ sql: String) throws(RemapError) {
        var error: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &error)
        if rc != SQLITE_OK {
            let message = error.map { String(cString: $0) } ?? "unknown"
            sqlite3_free(error)
            throw .io(errno: rc, context: "metadata: \(message) in \(sql.prefix(60))")
        }
    }

    /// Runs a cached prepared statement with `bindings`, calling `row` for
    /// each result row.
    func run(_ sql: String, _ bindings: [SQLValue] = [], row: (Row) throws(RemapError) -> Void = { _ in }) throws(RemapError) {
        let statement = try prepared(sql)
        defer { sqlite3_reset(statement); sqlite3_clear_bindings(statement) }
        for (index, value) in bindings.enumerated() {
            let position = Int32(index + 1)
            switch value {
            case .integer(let number): sqlite3_bind_int64(statement, position, number)
            // With its length, so text is stored whole even if it held a NUL.
            case .text(let text): sqlite3_bind_text(statement, position, text, Int32(text.utf8.count), sqliteTransient)
            case .null: sqlite3_bind_null(statement, position)
            }
        }
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { return }
            guard rc == SQLITE_ROW else { throw failure(rc, sql) }
            try row(Row(statement: statement))
        }
    }

    private func prepared(_ sql: String) throws(RemapError) -> OpaquePointer {
        if let statement = statements[sql] { return statement }
        var statement: OpaquePointer?
        let rc = sqlite3_prepare_v2(handle, sql, -1, &statement, nil)
        guard rc == SQLITE_OK, let statement else { throw failure(rc, sql) }
        statements[sql] = statement
        return statement
    }

    private func failure(_ rc: Int32, _ sql: String) -> RemapError {
        .io(errno: rc, context: "metadata: \(String(cString: sqlite3_errmsg(handle))) in \(sql.prefix(60))")
    }

    struct Row {
        let statement: OpaquePointer
        func integer(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }
        /// The whole text, by its length (as it was bound).
        func text(_ column: Int32) -> String {
            guard let characters = sqlite3_column_text(statement, column) else { return "" }
            let count = Int(sqlite3_column_bytes(statement, column))
            return String(decoding: UnsafeBufferPointer(start: characters, count: count), as: UTF8.self)
        }
        func optionalText(_ column: Int32) -> String? {
            sqlite3_column_type(statement, column) == SQLITE_NULL ? nil : text(column)
        }
        func optionalInteger(_ column: Int32) -> Int64? {
            sqlite3_column_type(statement, column) == SQLITE_NULL ? nil : integer(column)
        }
    }
}

enum SQLValue {
    case integer(Int64)
    case text(String)
    case null
}

/// SQLITE_TRANSIENT is a macro casting -1 to a function pointer, which Swift
/// cannot import: SQLite copies the bound text before the call returns.
private let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
