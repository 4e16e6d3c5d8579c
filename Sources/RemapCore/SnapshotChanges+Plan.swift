extension SnapshotChanges {
    /// The byte ranges that differ between `snapshot`'s map and `base`'s
    /// (another image of the pool), or without base the ranges that hold
    /// data; at chunk granularity, adjacent runs merged, cut at the
    /// snapshot's size (a larger base's tail is not the snapshot's).
    /// Pure: the maps are copy-on-write values, so any thread may compare them.
    public init(snapshot: String, map: ChunkMap, sizeBytes: UInt64, chunkSize: UInt64, base: (id: String, map: ChunkMap)?) {
        var runs: [Range<UInt64>] = []
        if let base {
            runs = map.changedRuns(comparedWith: base.map)
        } else {
            map.forEachRun { virtual, _, length in
                if let last = runs.last, last.upperBound == virtual {
                    runs[runs.count - 1] = last.lowerBound..<(virtual + length)
                } else {
                    runs.append(virtual..<(virtual + length))
                }
            }
        }
        var ranges: [ByteRange] = []
        var total: UInt64 = 0
        for run in runs {
            let start = run.lowerBound * chunkSize
            guard start < sizeBytes else { break }
            let end = min(run.upperBound * chunkSize, sizeBytes)
            ranges.append(ByteRange(offsetBytes: start, lengthBytes: end - start))
            total += end - start
        }
        self.init(snapshot: snapshot, base: base?.id, sizeBytes: sizeBytes, granularityBytes: chunkSize,
                  changedBytes: total, ranges: ranges)
    }
}
