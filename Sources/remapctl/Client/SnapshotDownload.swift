import RemapWire
/// Copies a snapshot's content into a local sparse file, fetching only the
/// ranges that hold data.
///
/// remapd says which ranges hold data (`GET .../changes` without a base);
/// everything else reads zeros and stays a hole in the file. Each range is
/// fetched in pieces of at most ``pieceBytes`` with HTTP `Range` requests,
/// one connection each, so remapctl never holds more than one piece. Blocks
/// of a piece that are zero anyway are not written either.
struct SnapshotDownload {
    let client: APIClient
    /// The snapshot's ID: a snapshot deleted and re-created under the same
    /// name meanwhile is not mixed in.
    let snapshotID: String
    /// The image's size and where its data is.
    let layout: SnapshotChanges

    /// The largest piece asked for in one request.
    static let pieceBytes = 4 << 20
    /// How long each wait for content bytes may take.
    static let bodyTimeoutSeconds = 60

    /// What a download did.
    struct Summary {
        /// Bytes fetched from remapd: the ranges holding data.
        var fetchedBytes = 0
        /// Bytes written to the file; the rest of what was fetched was zeros.
        var writtenBytes = 0
    }

    /// Checks that `layout` describes an image remapctl can write: sorted
    /// ranges within the image.
    init(client: APIClient, snapshotID: String, layout: SnapshotChanges) throws(ClientError) {
        var end = 0
        for range in layout.ranges {
            guard range.offsetBytes >= end, range.lengthBytes > 0, range.endBytes <= layout.sizeBytes else {
                throw .unexpectedBody(
                    path: "/v1/snapshots/\(snapshotID)/changes",
                    reason: "range \(range.offsetBytes)+\(range.lengthBytes) overlaps, is out of order "
                        + "or lies outside the \(layout.sizeBytes)-byte image")
            }
            end = range.endBytes
        }
        self.client = client
        self.snapshotID = snapshotID
        self.layout = layout
    }

    /// The bytes the download fetches.
    var dataBytes: Int { layout.ranges.reduce(0) { $0 + $1.lengthBytes } }

    /// Fetches every range into `file`, updating `progress` as bytes arrive.
    func run(into file: borrowing SparseFile, progress: inout TransferProgress?) throws(ClientError) -> Summary {
        var summary = Summary()
        for range in layout.ranges {
            var offset = range.offsetBytes
            while offset < range.endBytes {
                let piece = offset..<min(offset + Self.pieceBytes, range.endBytes)
                let bytes = try fetch(piece) { received in
                    progress?.update(doneBytes: summary.fetchedBytes + received)
                }
                summary.fetchedBytes += bytes.count
                summary.writtenBytes += try file.writeSkippingZeros(bytes, at: piece.lowerBound)
                offset = piece.upperBound
            }
        }
        return summary
    }

    /// The content of `piece`, checked against what was asked for.
    ///
    /// - Parameter received: Called with the piece's bytes received so far
    ///   as they arrive.
    private func fetch(_ piece: Range<Int>, received: (Int) -> Void) throws(ClientError) -> [UInt8] {
        var stream = try client.snapshotContent(
            snapshotID, range: piece, bodyTimeoutSeconds: Self.bodyTimeoutSeconds)
        try check(stream.head, for: piece)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(piece.count)
        while let chunk = try stream.next() {
            bytes += chunk
            guard bytes.count <= piece.count else { break }
            received(bytes.count)
        }
        guard bytes.count == piece.count else {
            throw .malformedResponse(
                "asked for \(piece.count) bytes at \(piece.lowerBound) of the snapshot's content, got \(bytes.count)")
        }
        return bytes
    }

    /// A `206 Partial Content` whose `Content-Range` is the piece asked for;
    /// a `200` only when the piece is the whole image.
    private func check(_ head: HTTPResponse, for piece: Range<Int>) throws(ClientError) {
        let size = layout.sizeBytes
        switch head.status {
        case 206:
            let expected = "bytes \(piece.lowerBound)-\(piece.upperBound - 1)/\(size)"
            guard let contentRange = head.header("Content-Range"), contentRange.trimmed == expected else {
                throw .malformedResponse(
                    "asked for \(expected) of the snapshot's content, got Content-Range "
                        + "'\(head.header("Content-Range") ?? "")'")
            }
        case 200 where piece == 0..<size:
            break
        default:
            throw .malformedResponse(
                "asked for bytes \(piece.lowerBound)-\(piece.upperBound - 1) of the snapshot's content, "
                    + "got HTTP \(head.status) (no range support?)")
        }
    }
}
