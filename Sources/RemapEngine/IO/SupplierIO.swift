import Dispatch
import Glibc
import RemapCore

/// The one seam every I/O on a supplier passes through: data reads and
/// writes and fallocate on the engine's ring, fdatasync and the zeroing of
/// freed chunks on the committer's thread. Faults are injected here
/// (`FaultInjector`), so tests reach every caller's error handling without a
/// patched build.
final class SupplierIO {
    private let ring: any IOQueue
    let faults: FaultInjector
    /// Runs work on the engine thread later (`Engine.post`): an injected
    /// failure still completes after the call that submitted it returns, as
    /// every `IOQueue` operation does.
    private let later: @Sendable (@escaping @Sendable () -> Void) -> Void

    init(ring: any IOQueue, faults: FaultInjector, later: @escaping @Sendable (@escaping @Sendable () -> Void) -> Void) {
        self.ring = ring
        self.faults = faults
        self.later = later
    }

    typealias Handler = IOQueue.Handler

    /// Applies the injected fault, if any: calls `run` with the byte count to
    /// use (maybe shortened), now or after a delay, or fails the handler.
    private func gate(_ target: FaultRule.Target, fd: Int32, count: Int, _ handler: @escaping Handler,
                      _ run: @escaping (Int) -> Void) {
        switch faults.fault(target, fd: fd) {
        case nil:
            run(count)
        case .short:
            // As the kernel cuts a file write short: at a block boundary (here
            // a sector), never inside one.
            let half = count / 2 & ~511
            run(half > 0 ? half : count)
        case .fail(let error):
            let box = UncheckedBox(handler)
            later { box.value(-error) }
        case .delay(let milliseconds):
            let box = UncheckedBox(run)
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(milliseconds))) { [later] in
                later { box.value(count) }
            }
        }
    }

    /// Reads up to `count` bytes; the handler gets the bytes read or -errno.
    func read(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        // The common case costs one atomic load: no gate closure.
        guard faults.isEnabled else { return ring.read(fd: fd, into: buffer, count: count, offset: offset, handler) }
        gate(.supplierRead, fd: fd, count: count, handler) { [ring] count in
            ring.read(fd: fd, into: buffer, count: count, offset: offset, handler)
        }
    }

    /// Writes up to `count` bytes; the handler gets the bytes written or -errno.
    func write(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        guard faults.isEnabled else { return ring.write(fd: fd, from: buffer, count: count, offset: offset, handler) }
        gate(.supplierWrite, fd: fd, count: count, handler) { [ring] count in
            ring.write(fd: fd, from: buffer, count: count, offset: offset, handler)
        }
    }

    /// fallocate(2) with FALLOC_FL_* `mode`.
    func allocateSpace(fd: Int32, mode: Int32, offset: UInt64, length: UInt64, _ handler: @escaping Handler) {
        guard faults.isEnabled else { return ring.allocateSpace(fd: fd, mode: mode, offset: offset, length: length, handler) }
        gate(.supplierAllocate, fd: fd, count: 0, handler) { [ring] _ in
            ring.allocateSpace(fd: fd, mode: mode, offset: offset, length: length, handler)
        }
    }

    /// Reads exactly `count` bytes, resubmitting after short reads; the
    /// handler gets `count` or -errno (-EIO for an unexpected end of file).
    func readFully(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        read(fd: fd, into: buffer, count: count, offset: offset) { [self] result in
            guard let done = Self.partial(result, of: count, handler) else { return }
            readFully(fd: fd, into: buffer + done, count: count - done, offset: offset + UInt64(done)) {
                handler($0 < 0 ? $0 : Int32(count))
            }
        }
    }

    /// Writes exactly `count` bytes, resubmitting after short writes.
    func writeFully(fd: Int32, from buffer: UnsafeRawPointer, count: Int, offset: UInt64, _ handler: @escaping Handler) {
        write(fd: fd, from: buffer, count: count, offset: offset) { [self] result in
            guard let done = Self.partial(result, of: count, handler) else { return }
            writeFully(fd: fd, from: buffer + done, count: count - done, offset: offset + UInt64(done)) {
                handler($0 < 0 ? $0 : Int32(count))
            }
        }
    }

    /// After one transfer toward `count` bytes: the bytes moved when more
    /// remain, or nil once `handler` got the answer (all moved, an error,
    /// or -EIO for a transfer of 0: end of file, or nothing written).
    private static func partial(_ result: Int32, of count: Int, _ handler: Handler) -> Int? {
        if result < 0 || Int(result) >= count {
            handler(result)
            return nil
        }
        if result == 0 {
            handler(-EIO)
            return nil
        }
        return Int(result)
    }

    // MARK: - Blocking calls (committer thread, start-up)

    /// fdatasync: 0, or the errno it failed with. Linux reports a write-back
    /// error once per file: the caller must keep it (the pool degrades).
    static func sync(_ fd: Int32, faults: FaultInjector) -> Int32 {
        let injected = faults.blockingFault(.supplierSync, fd: fd)
        if injected != 0 { return injected }
        while fdatasync(fd) != 0 {
            if errno != EINTR { return errno }
        }
        return 0
    }

    /// Makes a range of a supplier read zeros: punches a hole or zeroes the
    /// range in place, else writes zeros where the filesystem cannot.
    static func zero(_ range: ZeroRange, faults: FaultInjector) throws(RemapError) {
        let mode = range.punch ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
        var error = faults.blockingFault(.supplierAllocate, fd: range.fd)
        if error == 0 {
            if fallocate(range.fd, mode, off_t(range.offset), off_t(range.length)) == 0 { return }
            error = errno
        }
        guard error == EOPNOTSUPP || error == EINVAL else {
            throw .io(errno: error, context: "zeroing freed chunks: \(String(cString: strerror(error)))")
        }
        // The filesystem cannot zero a range: write zeros.
        let block = 1 << 20
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 4096)
        defer { zeros.deallocate() }
        memset(zeros, 0, block)
        var done: UInt64 = 0
        while done < range.length {
            let count = Int(min(UInt64(block), range.length - done))
            let injected = faults.blockingFault(.supplierWrite, fd: range.fd)
            if injected != 0 {
                throw .io(errno: injected, context: "writing zeros to freed chunks: \(String(cString: strerror(injected)))")
            }
            let written = try systemCall("writing zeros to freed chunks") {
                pwrite(range.fd, zeros, count, off_t(range.offset + done))
            }
            done += UInt64(written)
        }
    }
}
