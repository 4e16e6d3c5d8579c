import Foundation
import Glibc
import RemapCore
@testable import RemapEngine
import RemapStore

/// A directory under /tmp, removed with what it holds when the value goes.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/remap-test.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw RemapError.io(errno: errno, context: "mkdtemp") }
        path = String(cString: made)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// A started engine (the portable threads engine, so it runs where
/// io_uring is off) in a temporary state directory, with pool `p`
/// (`chunks` chunks of 64 KiB); stopped when the value goes.
final class EngineFixture {
    static let chunkSize: UInt64 = 64 << 10
    let directory: TemporaryDirectory
    let engine: Engine

    init(chunks: UInt64 = 128) throws {
        directory = try TemporaryDirectory()
        engine = try Engine(store: try MetadataStore(path: directory.path + "/metadata.db"),
                            supplierDirectory: directory.path, kind: .threads)
        engine.start()
        _ = try engine.createPool(PoolSpec(name: "p", chunkSize: Self.chunkSize, suppliers: [
            .file(path: directory.path + "/p.img", sizeBytes: chunks * Self.chunkSize, preallocate: false),
        ]))
    }

    deinit {
        engine.stop()
    }

    /// Runs `body` on the engine thread with the I/O surface of export
    /// `name`, and waits for what it answers.
    func withExport<T: Sendable>(_ name: String, _ body: @escaping @Sendable (VolumeIO, @escaping @Sendable (Result<T, RemapError>) -> Void) -> Void)
        throws(RemapError) -> T {
        let engine = engine
        return try engine.call { reply in
            guard let io = engine.export(named: name) else { return reply(.failure(.notFound(kind: "export", name: name))) }
            body(io, reply)
        }
    }
}

/// A buffer handed to the engine thread while the test waits for it.
struct SharedBuffer: @unchecked Sendable {  // the test blocks until the engine is done with it
    let buffer: IOBuffer

    init(count: Int, filledWith byte: UInt8) {
        buffer = IOBuffer(count: count)
        memset(buffer.pointer, Int32(byte), count)
    }

    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: buffer.pointer, count: buffer.count)) }
}
