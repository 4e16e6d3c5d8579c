import CSystemd
import Glibc

/// remapd's side of the systemd protocol: readiness and status
/// notifications, the watchdog, and socket activation. Every call is a
/// no-op when remapd does not run under systemd.
enum Systemd {
    static func notify(_ state: String) {
        _ = sd_notify(0, state)
    }

    /// The watchdog interval systemd asks for (WatchdogSec=), in nanoseconds.
    static var watchdogInterval: Int64? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return Int64(microseconds) * 1000
    }

    /// Sockets passed by socket activation, by their FileDescriptorName=.
    static func activatedSockets() -> [String: Int32] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = sd_listen_fds_with_names(1, &names)
        guard count > 0 else { return [:] }
        defer {
            for index in 0..<Int(count) { free(names?[index]) }
            free(names)
        }
        var sockets: [String: Int32] = [:]
        for index in 0..<Int(count) {
            let name = names?[index].map { String(cString: $0) } ?? "unknown"
            let fd = SD_LISTEN_FDS_START + Int32(index)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            sockets[name] = fd
        }
        return sockets
    }
}
