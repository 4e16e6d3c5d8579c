/// A heap buffer owned by one I/O operation (a reply being sent, a write
/// payload being received, a read being filled). It is freed when the last
/// closure that captured it is released, which is after the ring reported
/// the operation's completion.
final class IOBuffer {
    let pointer: UnsafeMutableRawPointer
    let count: Int

    /// Page-aligned from a page up unless `pageAligned` is false; a small
    /// one (a reply header) never is: aligning it would cost most of a page.
    init(count: Int, pageAligned: Bool = true) {
        self.count = count
        pointer = .allocate(byteCount: max(count, 1), alignment: pageAligned && count >= 4096 ? 4096 : 16)
    }

    init(copying bytes: [UInt8]) {
        count = bytes.count
        pointer = .allocate(byteCount: max(count, 1), alignment: 16)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { pointer.copyMemory(from: base, byteCount: count) }
        }
    }

    deinit { pointer.deallocate() }
}
