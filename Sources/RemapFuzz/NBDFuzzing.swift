import Foundation
import Glibc
import RemapCore
import RemapEngine
import RemapStore

/// The NBD targets: one engine (the portable threads engine, so it runs
/// wherever io_uring is off) in a temporary state directory, serving NBD on
/// a unix socket as remapd does. Each input is sent on a new connection
/// whose sending side is then shut down, and every reply is read until the
/// engine closes the connection; still open `hangSeconds` later is a hang.
///
/// Four exports, so requests reach the data path's branches: `disk` (1 MiB
/// with data, in a roomy pool, its chunks shared with) `disk@base` (a
/// snapshot: read-only), `thin` (1 MiB over a 64 KiB pool: writes run out
/// of space) and `thin-bound` (an extra export of it whose writes draw on a
/// reservation). The state carries over from input to input, as a daemon's
/// does from client to client.
final class NBDFuzzing: Sendable {
    static let shared = NBDFuzzing()
    static let exports = ["disk", "disk@base", "thin", "thin-bound"]
    static let hangSeconds = 10

    let directory: String
    let socketPath: String
    let engine: Engine

    private init() {
        signal(SIGPIPE, SIG_IGN)  // as remapd: a client gone is an error result, not a signal
        directory = Self.makeDirectory()
        socketPath = directory + "/nbd.sock"
        do {
            let pools = directory + "/pools"
            try SupplierFile.makeDirectories(pools)
            engine = try Engine(store: try MetadataStore(path: directory + "/metadata.db"), supplierDirectory: pools, kind: .threads)
            try engine.bootstrapPool(name: "default", path: pools + "/default.img", sizeBytes: 8 << 20, chunkSize: 4096)
            engine.start()
            engine.serveNBD(listener: try SocketListener.unix(path: socketPath))
            _ = try engine.createVolume(VolumeSpec(name: "disk", sizeBytes: 1 << 20, pool: "default"))
        } catch {
            fatalError("cannot start the engine for NBD fuzzing in \(directory): \(error)")
        }
        // Data in the first and the middle chunks of `disk`, then a
        // snapshot that shares them.
        var requests = NBDClientWire()
        for offset: UInt64 in [0, 512 << 10] {
            requests.request(command: NBDClientWire.commandWrite, offset: offset, length: 8192)
            requests.append(repeatElement(0xa5, count: 8192))
        }
        requests.request(command: NBDClientWire.commandFlush, offset: 0, length: 0)
        exchange(Self.transmissionPrefix(selector: 0) + requests.bytes)
        do {
            _ = try engine.createSnapshot(volume: "disk", snapshot: "base")
            _ = try engine.createPool(PoolSpec(name: "small", chunkSize: 4096, suppliers: [
                .file(path: directory + "/pools/small.img", sizeBytes: 64 << 10, preallocate: true),
            ]))
            _ = try engine.createVolume(VolumeSpec(name: "thin", sizeBytes: 1 << 20, pool: "small"))
            let (reservation, _) = try engine.createReservation(
                volume: "thin", ReservationSpec(amount: .pooled(bytes: 16 << 10), ttlSeconds: nil, name: "bound"))
            _ = try engine.createExport(volume: "thin", reservation: reservation.id, exportName: "thin-bound")
        } catch {
            fatalError("cannot set up the NBD fuzzing exports in \(directory): \(error)")
        }
    }

    /// A fresh state directory in /dev/shm (commits need no disk), removed
    /// at exit; those of earlier processes that died (a crash found) go now.
    private static func makeDirectory() -> String {
        let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"
        let files = FileManager.default
        for name in (try? files.contentsOfDirectory(atPath: base)) ?? [] where name.hasPrefix("remap-fuzz.") {
            if let pid = Int32(name.dropFirst("remap-fuzz.".count)), kill(pid, 0) != 0 && errno == ESRCH {
                try? files.removeItem(atPath: base + "/" + name)
            }
        }
        let path = "\(base)/remap-fuzz.\(getpid())"
        try? files.removeItem(atPath: path)
        guard mkdir(path, 0o700) == 0 else { fatalError("cannot create \(path): \(String(cString: strerror(errno)))") }
        removedAtExit = path
        atexit {
            if let path = removedAtExit { try? FileManager.default.removeItem(atPath: path) }
        }
        return path
    }

    /// A valid handshake that ends in transmission: client flags, then
    /// (`selector` bit 2) structured replies and the `base:allocation`
    /// context, then GO of export `selector & 3`.
    static func transmissionPrefix(selector: UInt8) -> [UInt8] {
        let name = exports[Int(selector & 3)]
        var wire = NBDClientWire()
        wire.u32(NBDClientWire.fixedNewstyle | NBDClientWire.noZeroes)
        if selector & 4 != 0 {
            wire.option(NBDClientWire.optionStructuredReply, [])
            var context = NBDClientWire()
            context.string(name)
            context.u32(1)
            context.string("base:allocation")
            wire.option(NBDClientWire.optionSetMetaContext, context.bytes)
        }
        var go = NBDClientWire()
        go.string(name)
        go.u16(0)
        wire.option(NBDClientWire.optionGo, go.bytes)
        return wire.bytes
    }

    /// Sends `input` on a new connection, shuts its sending side, and reads
    /// until the engine closes it, giving what arrives to `receive`. Traps
    /// on a hang.
    func exchange(_ input: [UInt8], receive: (UnsafeRawBufferPointer) -> Void = { _ in }) {
        let fd = connectToEngine()
        defer { close(fd) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1 << 18, alignment: 8)
        defer { buffer.deallocate() }
        let deadline = monotonicSeconds() + Double(Self.hangSeconds)
        var sent = 0
        var received = 0
        var sending = true
        if input.isEmpty {
            shutdown(fd, Int32(SHUT_WR))
            sending = false
        }
        while true {
            let left = deadline - monotonicSeconds()
            guard left > 0 else {
                FileHandle.standardError.write(Data(threadReport().utf8))
                fatalError("hang: the NBD connection is still open \(Self.hangSeconds) s after \(sending ? "" : "the end of ")its input"
                           + " (\(sent) of \(input.count) bytes sent, \(received) received"
                           + (received == 0 ? ": not even the greeting, so the engine did not accept the connection or is stuck)" : ")"))
            }
            var watch = pollfd(fd: fd, events: Int16(POLLIN) | (sending ? Int16(POLLOUT) : 0), revents: 0)
            let ready = poll(&watch, 1, Int32(left * 1000) + 1)
            guard ready > 0 else {
                guard ready == 0 || errno == EINTR else { fatalError("poll: \(String(cString: strerror(errno)))") }
                continue
            }
            if watch.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let count = recv(fd, buffer, 1 << 18, Int32(MSG_DONTWAIT))
                if count == 0 { return }
                if count > 0 {
                    receive(UnsafeRawBufferPointer(start: buffer, count: count))
                    received += count
                } else if errno == ECONNRESET {
                    return  // the engine dropped the client with input unread
                } else if errno != EAGAIN && errno != EINTR {
                    fatalError("recv: \(String(cString: strerror(errno)))")
                }
            }
            if sending && watch.revents & Int16(POLLOUT) != 0 {
                // invariant: `input` is not empty here (an empty one is never sent)
                let count = input.withUnsafeBytes { send(fd, $0.baseAddress! + sent, input.count - sent, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
                if count > 0 { sent += count }
                if count < 0 && errno != EAGAIN && errno != EINTR {
                    sending = false  // the engine shut the connection: read what it said until it closes
                } else if sent == input.count {
                    shutdown(fd, Int32(SHUT_WR))
                    sending = false
                }
            }
        }
    }

    /// Where every thread of the process is, for a hang: their stacks from
    /// gdb where it is installed (written straight to stderr: a pipe could
    /// fill while gdb holds this process stopped), else their states from /proc.
    private func threadReport() -> String {
        let gdb = Process()
        gdb.executableURL = URL(fileURLWithPath: "/usr/bin/gdb")
        gdb.arguments = ["-p", String(getpid()), "-batch", "-nx", "-ex", "thread apply all bt 40"]
        gdb.standardOutput = FileHandle.standardError
        gdb.standardError = FileHandle.standardError
        if (try? gdb.run()) != nil {
            gdb.waitUntilExit()
            return ""
        }
        var report = "threads at the hang (name, state, CPU ticks, kernel wait channel):\n"
        for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
            let stat = (try? String(contentsOfFile: "/proc/self/task/\(task)/stat", encoding: .utf8)) ?? ""
            let wchan = (try? String(contentsOfFile: "/proc/self/task/\(task)/wchan", encoding: .utf8)) ?? ""
            // comm is in parentheses; state, then utime and stime are fields 14 and 15.
            let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
            let name = stat.split(separator: "(").dropFirst().first?.split(separator: ")").first ?? ""
            let ticks = fields.count > 13 ? "\(fields[11]) + \(fields[12])" : "?"
            report += "  \(task) \(name) \(fields.first ?? "?") \(ticks) \(wchan)\n"
        }
        return report
    }

    private func connectToEngine() -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { fatalError("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: socketPath.utf8)
            raw[socketPath.utf8.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, __CONST_SOCKADDR_ARG(__sockaddr__: $0), socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard connected == 0 else { fatalError("connect \(socketPath): \(String(cString: strerror(errno)))") }
        return fd
    }

    private func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}

/// The state directory to remove at exit (set once, before any input).
private nonisolated(unsafe) var removedAtExit: String?

/// What a client sends, big-endian as the protocol wants, and the numbers
/// of what it receives (NetworkBlockDevice/nbd doc/proto.md; RemapEngine
/// keeps its own internal).
struct NBDClientWire {
    static let fixedNewstyle: UInt32 = 1
    static let noZeroes: UInt32 = 2
    static let optionMagic: UInt64 = 0x4948_4156_454f_5054  // "IHAVEOPT"
    static let requestMagic: UInt32 = 0x2560_9513
    static let optionGo: UInt32 = 7
    static let optionStructuredReply: UInt32 = 8
    static let optionSetMetaContext: UInt32 = 10
    static let commandRead: UInt16 = 0
    static let commandWrite: UInt16 = 1
    static let commandDisconnect: UInt16 = 2
    static let commandFlush: UInt16 = 3
    static let commandBlockStatus: UInt16 = 7
    static let flagRequestOne: UInt16 = 1 << 3

    // What the server sends.
    static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    static let replyAck: UInt32 = 1
    static let simpleReplyMagic: UInt32 = 0x6744_6698
    static let structuredReplyMagic: UInt32 = 0x668e_33ef
    static let chunkNone: UInt16 = 0
    static let chunkOffsetData: UInt16 = 1
    static let chunkOffsetHole: UInt16 = 2
    static let chunkBlockStatus: UInt16 = 5
    static let chunkError: UInt16 = 0x8001
    static let chunkErrorOffset: UInt16 = 0x8002

    private(set) var bytes: [UInt8] = []

    mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { bytes += $0 } }
    mutating func append<S: Sequence>(_ data: S) where S.Element == UInt8 { bytes += data }

    /// A 32-bit length, then the name.
    mutating func string(_ text: String) {
        u32(UInt32(text.utf8.count))
        append(text.utf8)
    }

    mutating func option(_ code: UInt32, _ data: [UInt8]) {
        u64(Self.optionMagic)
        u32(code)
        u32(UInt32(data.count))
        append(data)
    }

    mutating func request(command: UInt16, flags: UInt16 = 0, cookie: UInt64 = 1, offset: UInt64, length: UInt32) {
        u32(Self.requestMagic)
        u16(flags)
        u16(command)
        u64(cookie)
        u64(offset)
        u32(length)
    }
}
