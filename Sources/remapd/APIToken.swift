import Glibc
import RemapCore
import RemapEngine

/// The bearer token that TCP clients of the REST API must send.
enum APIToken {
    /// Reads the token from `path`, creating it (32 random bytes as hex,
    /// mode 0600) when the file does not exist.
    static func load(orCreateAt path: String) throws(RemapError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let count = try systemCall("reading \(path)") { read(fd, &buffer, buffer.count) }
            let token = String(String(decoding: buffer.prefix(count), as: UTF8.self).trimmingWhitespace())
            guard token.count >= 16, !token.contains(where: { $0.isWhitespace }) else {
                throw .invalidArgument("API token file \(path) must hold one token of at least 16 characters")
            }
            return token
        }
        guard errno == ENOENT else {
            throw .io(errno: errno, context: "opening \(path): \(String(cString: strerror(errno)))")
        }
        var generator = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in
            let byte = UInt8.random(in: 0...255, using: &generator)
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
        let created = try systemCall("creating \(path)") { open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
        defer { close(created) }
        let line = Array((token + "\n").utf8)
        try systemCall("writing \(path)") { write(created, line, line.count) }
        try systemCall("syncing \(path)") { fsync(created) }
        return token
    }
}
