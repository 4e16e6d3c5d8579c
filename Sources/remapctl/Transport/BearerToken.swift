import Glibc
import RemapWire

/// The credential remapctl sends as `Authorization: Bearer …`, taken from
/// `--token` or read from `--token-file`.
enum BearerToken {
    /// Token files larger than this are surely the wrong file.
    static let maximumFileBytes = 64 * 1024

    /// Reads the token in `path`, ignoring surrounding whitespace such as the
    /// trailing newline editors add.
    static func read(path: String) throws(ClientError) -> String {
        let bytes: [UInt8]
        do throws(Errno) {
            bytes = try readFile(path)
        } catch {
            throw .unreadableTokenFile(path: path, reason: error.description)
        }
        let token = String(decoding: bytes, as: UTF8.self).trimmed
        guard !token.isEmpty else {
            throw .unreadableTokenFile(path: path, reason: "the file is empty")
        }
        guard isUsable(token) else {
            throw .unreadableTokenFile(path: path, reason: "the token contains spaces or control characters")
        }
        return token
    }

    /// Whether `token` can go in a header as is: no spaces or control
    /// characters, which would split or forge header lines.
    static func isUsable(_ token: String) -> Bool {
        !token.isEmpty && token.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value != 0x7F }
    }

    private static func readFile(_ path: String) throws(Errno) -> [UInt8] {
        let descriptor = try valueOrErrno { open(path, O_RDONLY | O_CLOEXEC) }
        defer { _ = close(descriptor) }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = try valueOrErrno {
                chunk.withUnsafeMutableBytes { raw in Glibc.read(descriptor, raw.baseAddress, raw.count) }
            }
            if count == 0 { return contents }
            contents += chunk[..<count]
            if contents.count > maximumFileBytes { throw .fileTooLarge }
        }
    }
}
