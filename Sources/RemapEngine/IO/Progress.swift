/// Counts the pieces of one request still in flight and remembers the first
/// failure. The code issuing the pieces holds one more count, given up by
/// `issued()` once all are issued: a piece that completes at once (an error
/// found before any I/O) can never finish the request while others are still
/// being issued, nor twice.
final class Progress {
    private var remaining: Int
    private(set) var failure: Int32 = 0
    /// The supplier written or zeroed by the first failed piece, if known.
    private(set) var failedFD: Int32?

    init(pieces: Int) { remaining = pieces + 1 }

    /// One piece is done; true when it was the last (finish the request).
    func complete(_ result: Int32, fd: Int32? = nil) -> Bool {
        remaining -= 1
        if result < 0 && failure == 0 {
            failure = result
            failedFD = fd
        }
        return remaining == 0
    }

    /// Every piece is issued; true when all are done already.
    func issued() -> Bool { complete(0) }
}
