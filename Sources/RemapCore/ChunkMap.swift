import Synchronization

/// A volume's mapping from virtual chunk to physical chunk (pool-wide index).
///
/// The virtual range is cut into pages of 4096 chunks. A page holds a
/// sorted list of extents — runs of virtual chunks that map to consecutive
/// physical chunks — packed into 8 bytes each: 12 bits of offset in the
/// page, 12 bits of length - 1, 40 bits of first physical chunk. So a chunk
/// mapped on its own costs 8 bytes, and a run of up to 4096 contiguous
/// chunks (what sequential writes produce) costs 8 bytes in all. The
/// directory costs 4 bytes per page of the volume's size (16 KiB for 1 TiB
/// of 64 KiB chunks), mapped or not.
public struct ChunkMap: Sendable {
    /// Changes with every mutation, unique across all maps: equal
    /// generations mean equal contents (the usage figures are cached on it).
    public private(set) var generation = ChunkMap.nextGeneration()
    private static let generations = Atomic<UInt64>(0)
    private static func nextGeneration() -> UInt64 { generations.add(1, ordering: .relaxed).newValue }

    static let pageShift: UInt64 = 12
    static let pageSize: UInt64 = 1 << pageShift
    static let noPage = UInt32.max
    /// Physical chunk numbers must fit the 40 bits of an extent.
    public static let maximumPhysicalChunk: UInt64 = (1 << 40) - 1

    public private(set) var virtualChunks: UInt64
    public private(set) var mappedCount: UInt64 = 0
    /// Page number → index into `pages`, or `noPage`.
    private var directory: [UInt32]
    private var pages: [[UInt64]] = []
    private var freePages: [UInt32] = []

    public init(virtualChunks: UInt64) {
        self.virtualChunks = virtualChunks
        self.directory = Array(repeating: Self.noPage, count: Int((virtualChunks + Self.pageSize - 1) >> Self.pageShift))
    }

    // MARK: - Extents

    private struct Extent {
        var start: UInt64
        var length: UInt64
        var physical: UInt64

        init(start: UInt64, length: UInt64, physical: UInt64) {
            self.start = start
            self.length = length
            self.physical = physical
        }

        init(_ packed: UInt64) {
            start = packed >> 52
            length = (packed >> 40 & 0xfff) + 1
            physical = packed & ChunkMap.maximumPhysicalChunk
        }

        var packed: UInt64 { start << 52 | (length - 1) << 40 | physical }
        var end: UInt64 { start + length }
    }

    /// Index of the last extent starting at or before `offset`, or nil.
    private static func search(_ page: [UInt64], _ offset: UInt64) -> Int? {
        var low = 0
        var high = page.count
        let key = offset << 52 | 0xf_ffff_ffff_ffff
        while low < high {
            let middle = (low + high) / 2
            if page[middle] <= key { low = middle + 1 } else { high = middle }
        }
        return low == 0 ? nil : low - 1
    }

    /// The physical chunk behind `chunk`, or nil for a hole.
    public func lookup(_ chunk: UInt64) -> UInt64? {
        let slot = directory[Int(chunk >> Self.pageShift)]
        guard slot != Self.noPage else { return nil }
        let page = pages[Int(slot)]
        let offset = chunk & (Self.pageSize - 1)
        guard let index = Self.search(page, offset) else { return nil }
        let extent = Extent(page[index])
        return offset < extent.end ? extent.physical + (offset - extent.start) : nil
    }

    /// Maps `chunk` to `physical`; returns what it pointed at before.
    @discardableResult
    public mutating func map(_ chunk: UInt64, to physical: UInt64) -> UInt64? {
        precondition(chunk < virtualChunks, "chunk \(chunk) beyond volume end")
        generation = Self.nextGeneration()
        precondition(physical <= Self.maximumPhysicalChunk, "physical chunk \(physical) too large")
        let old = unmap(chunk)
        let pageNumber = Int(chunk >> Self.pageShift)
        if directory[pageNumber] == Self.noPage {
            if let reused = freePages.popLast() {
                directory[pageNumber] = reused
            } else {
                directory[pageNumber] = UInt32(pages.count)
                pages.append([])
            }
        }
        let slot = Int(directory[pageNumber])
        let offset = chunk & (Self.pageSize - 1)
        Self.insert(&pages[slot], offset: offset, physical: physical)
        mappedCount += 1
        return old
    }

    /// Inserts a one-chunk mapping at a hole, merging with neighbours that
    /// continue it on both sides.
    private static func insert(_ page: inout [UInt64], offset: UInt64, physical: UInt64) {
        let before = search(page, offset)
        let after = (before ?? -1) + 1
        var joinsBefore = false
        if let before {
            let extent = Extent(page[before])
            joinsBefore = extent.end == offset && extent.physical + extent.length == physical && extent.length < pageSize
        }
        var joinsAfter = false
        if after < page.count {
            let extent = Extent(page[after])
            joinsAfter = extent.start == offset + 1 && extent.physical == physical + 1 && extent.length < pageSize
        }
        switch (joinsBefore, joinsAfter) {
        case (true, true):
            var merged = Extent(page[before!])  // invariant: joinsBefore implies before
            let next = Extent(page[after])
            if merged.length + 1 + next.length <= pageSize {
                merged.length += 1 + next.length
                page[before!] = merged.packed  // invariant: as above
                page.remove(at: after)
            } else {
                merged.length += 1
                page[before!] = merged.packed  // invariant: as above
            }
        case (true, false):
            var merged = Extent(page[before!])  // invariant: joinsBefore implies before
            merged.length += 1
            page[before!] = merged.packed  // invariant: as above
        case (false, true):
            var merged = Extent(page[after])
            merged.start -= 1
            merged.physical -= 1
            merged.length += 1
            page[after] = merged.packed
        case (false, false):
            growIfFull(&page)
            page.insert(Extent(start: offset, length: 1, physical: physical).packed, at: after)
        }
    }

    /// Grows a page's storage by an eighth rather than doubling, to keep
    /// slack small on pages of scattered chunks.
    private static func growIfFull(_ page: inout [UInt64]) {
        if page.count == page.capacity { page.reserveCapacity(page.count + max(8, page.count / 8)) }
    }

    /// Unmaps `chunk`; returns the physical chunk it held, if any.
    @discardableResult
    public mutating func unmap(_ chunk: UInt64) -> UInt64? {
        generation = Self.nextGeneration()
        let pageNumber = Int(chunk >> Self.pageShift)
        let slot = directory[pageNumber]
        guard slot != Self.noPage else { return nil }
        let offset = chunk & (Self.pageSize - 1)
        guard let index = Self.search(pages[Int(slot)], offset) else { return nil }
        let extent = Extent(pages[Int(slot)][index])
        guard offset < extent.end else { return nil }
        let physical = extent.physical + (offset - extent.start)
        var pieces: [UInt64] = []
        if offset > extent.start {
            pieces.append(Extent(start: extent.start, length: offset - extent.start, physical: extent.physical).packed)
        }
        if offset + 1 < extent.end {
            pieces.append(Extent(start: offset + 1, length: extent.end - offset - 1, physical: physical + 1).packed)
        }
        if pieces.count == 2 { Self.growIfFull(&pages[Int(slot)]) }
        pages[Int(slot)].replaceSubrange(index...index, with: pieces)
        mappedCount -= 1
        if pages[Int(slot)].isEmpty {
            pages[Int(slot)] = []
            freePages.append(slot)
            directory[pageNumber] = Self.noPage
        }
        return physical
    }

    /// Grows (with holes) or shrinks (dropping the mappings past the end).
    public mutating func resize(virtualChunks newCount: UInt64) {
        guard newCount != virtualChunks else { return }
        generation = Self.nextGeneration()
        if newCount < virtualChunks {
            var cut: [UInt64] = []
            forEachMapping(in: newCount..<virtualChunks) { virtual, _ in cut.append(virtual) }
            for chunk in cut { unmap(chunk) }
        }
        let pageCount = Int((newCount + Self.pageSize - 1) >> Self.pageShift)
        if pageCount > directory.count {
            directory.append(contentsOf: repeatElement(Self.noPage, count: pageCount - directory.count))
        } else {
            directory.removeLast(directory.count - pageCount)
        }
        virtualChunks = newCount
    }

    /// How many chunks of `range` are mapped, from the extents: cheap even
    /// for huge ranges.
    public func mappedCount(in range: Range<UInt64>) -> UInt64 {
        guard !range.isEmpty else { return 0 }
        var count: UInt64 = 0
        let firstPage = Int(range.lowerBound >> Self.pageShift)
        let lastPage = Int((range.upperBound - 1) >> Self.pageShift)
        for pageNumber in firstPage...min(lastPage, directory.count - 1) where directory[pageNumber] != Self.noPage {
            let base = UInt64(pageNumber) << Self.pageShift
            for packed in pages[Int(directory[pageNumber])] {
                let extent = Extent(packed)
                let start = max(base + extent.start, range.lowerBound)
                let end = min(base + extent.end, range.upperBound)
                if end > start { count += end - start }
            }
        }
        return count
    }

    /// Every mapping, in virtual order.
    public func forEachMapping(_ body: (_ virtual: UInt64, _ physical: UInt64) -> Void) {
        for (pageNumber, slot) in directory.enumerated() where slot != Self.noPage {
            let base = UInt64(pageNumber) << Self.pageShift
            for packed in pages[Int(slot)] {
                let extent = Extent(packed)
                for step in 0..<extent.length { body(base + extent.start + step, extent.physical + step) }
            }
        }
    }

    /// The mappings of the virtual chunks in `range`, in virtual order:
    /// only the pages it covers are visited.
    public func forEachMapping(in range: Range<UInt64>, _ body: (_ virtual: UInt64, _ physical: UInt64) -> Void) {
        forEachRun(in: range) { virtual, physical, length in
            for step in 0..<length { body(virtual + step, physical + step) }
        }
    }

    /// The runs (extents) of `range`, cut at its ends, in virtual order.
    public func forEachRun(in range: Range<UInt64>, _ body: (_ virtual: UInt64, _ physical: UInt64, _ length: UInt64) -> Void) {
        let end = min(range.upperBound, virtualChunks)
        guard range.lowerBound < end else { return }
        for pageNumber in Int(range.lowerBound >> Self.pageShift)...Int((end - 1) >> Self.pageShift)
        where directory[pageNumber] != Self.noPage {
            let base = UInt64(pageNumber) << Self.pageShift
            for packed in pages[Int(directory[pageNumber])] {
                let extent = Extent(packed)
                let start = max(base + extent.start, range.lowerBound)
                let stop = min(base + extent.end, end)
                if stop > start { body(start, extent.physical + (start - base - extent.start), stop - start) }
            }
        }
    }

    /// The virtual chunks of `range` that are holes, in order, found from
    /// the extents (a mapped range costs its extents, not a lookup a chunk).
    public func holes(in range: Range<UInt64>) -> [UInt64] {
        var holes: [UInt64] = []
        var next = range.lowerBound
        forEachRun(in: range) { virtual, _, length in
            holes += next..<virtual
            next = virtual + length
        }
        holes += next..<range.upperBound
        return holes
    }

    /// Every run of consecutive virtual chunks mapped to consecutive
    /// physical chunks (an extent), in virtual order.
    public func forEachRun(_ body: (_ virtual: UInt64, _ physical: UInt64, _ length: UInt64) -> Void) {
        for (pageNumber, slot) in directory.enumerated() where slot != Self.noPage {
            let base = UInt64(pageNumber) << Self.pageShift
            for packed in pages[Int(slot)] {
                let extent = Extent(packed)
                body(base + extent.start, extent.physical, extent.length)
            }
        }
    }

    /// Every (virtual, physical) pair that one or more of `maps` maps, once,
    /// as runs of consecutive virtual chunks on consecutive physical ones,
    /// in no particular order. Pages several maps share (a family's maps
    /// share every page nobody wrote since a snapshot) are read once.
    public static func forEachDistinctRun(in maps: [ChunkMap], _ body: (_ virtual: UInt64, _ physical: UInt64, _ length: UInt64) -> Void) {
        if maps.count == 1 { return maps[0].forEachRun(body) }
        let pageCount = maps.map(\.directory.count).max() ?? 0
        for pageNumber in 0..<pageCount {
            var storages = Set<UnsafeRawPointer>()
            var distinct: [[UInt64]] = []
            for map in maps {
                let extents = map.page(pageNumber)
                guard !extents.isEmpty, let storage = extents.withUnsafeBufferPointer({ $0.baseAddress.map(UnsafeRawPointer.init) }),
                      storages.insert(storage).inserted
                else { continue }
                distinct.append(extents)
            }
            guard !distinct.isEmpty else { continue }
            let base = UInt64(pageNumber) << pageShift
            if distinct.count == 1 {
                for packed in distinct[0] {
                    let extent = Extent(packed)
                    body(base + extent.start, extent.physical, extent.length)
                }
                continue
            }
            // Pairs are equal when their runs lie on one line (physical - virtual)
            // and overlap: sort by line, then start, and merge.
            var runs: [(line: UInt64, start: UInt64, end: UInt64)] = []
            for extents in distinct {
                for packed in extents {
                    let extent = Extent(packed)
                    runs.append((extent.physical &- extent.start, extent.start, extent.end))
                }
            }
            runs.sort { ($0.line, $0.start) < ($1.line, $1.start) }
            var current = runs[0]
            for run in runs.dropFirst() {
                if run.line == current.line && run.start <= current.end {
                    current.end = max(current.end, run.end)
                    continue
                }
                body(base + current.start, current.line &+ current.start, current.end - current.start)
                current = run
            }
            body(base + current.start, current.line &+ current.start, current.end - current.start)
        }
    }

    /// The extents of page `number`, empty for a page with no mapping.
    private func page(_ number: Int) -> [UInt64] {
        guard number < directory.count, directory[number] != Self.noPage else { return [] }
        return pages[Int(directory[number])]
    }

    /// Every mapping, in virtual order, except those on pages identical to
    /// the same page of one of `others` (pages a snapshot still shares are
    /// compared whole, not chunk by chunk).
    public func forEachMapping(skippingPagesSharedWith others: [ChunkMap], _ body: (_ virtual: UInt64, _ physical: UInt64) -> Void) {
        for (pageNumber, slot) in directory.enumerated() where slot != Self.noPage {
            let extents = pages[Int(slot)]
            // Shared storage first (a pointer each): with a thousand snapshots,
            // comparing contents in member order would compare hundreds of pages.
            let storage = extents.withUnsafeBufferPointer { $0.baseAddress }
            if others.contains(where: { $0.page(pageNumber).withUnsafeBufferPointer { $0.baseAddress } == storage }) { continue }
            if others.contains(where: { $0.page(pageNumber) == extents }) { continue }
            let base = UInt64(pageNumber) << Self.pageShift
            for packed in extents {
                let extent = Extent(packed)
                for step in 0..<extent.length { body(base + extent.start + step, extent.physical + step) }
            }
        }
    }

    /// The physical chunks this map maps that none of `others` maps at the
    /// same virtual chunk, in virtual order. Pages shared with one of them
    /// are skipped whole. `others` are searched in order: the likeliest to
    /// share first (see `Volume.othersNearestFirst`).
    public func chunks(notMappedBy others: [ChunkMap]) -> [UInt64] {
        var only: [UInt64] = []
        forEachMapping(skippingPagesSharedWith: others) { virtual, physical in
            for other in others where virtual < other.virtualChunks && other.lookup(virtual) == physical {
                return
            }
            only.append(physical)
        }
        return only
    }

    /// The runs of virtual chunks whose mapping differs between this map and
    /// `other` (a chunk past the end of one counts as a hole there). Equal
    /// pages — which snapshots share until written — are skipped whole.
    public func changedRuns(comparedWith other: ChunkMap) -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        let limit = max(virtualChunks, other.virtualChunks)
        let pageCount = Int((limit + Self.pageSize - 1) >> Self.pageShift)
        for pageNumber in 0..<pageCount {
            let mine = page(pageNumber)
            let theirs = other.page(pageNumber)
            if mine == theirs { continue }
            let base = UInt64(pageNumber) << Self.pageShift
            for chunk in base..<min(base + Self.pageSize, limit) {
                let a = chunk < virtualChunks ? lookup(chunk) : nil
                let b = chunk < other.virtualChunks ? other.lookup(chunk) : nil
                guard a != b else { continue }
                if let last = runs.last, last.upperBound == chunk {
                    runs[runs.count - 1] = last.lowerBound..<(chunk + 1)
                } else {
                    runs.append(chunk..<(chunk + 1))
                }
            }
        }
        return runs
    }

    /// Bytes the map holds in memory (directory and extents), for the
    /// scale benchmark.
    public var memoryBytes: Int {
        directory.capacity * 4 + pages.reduce(0) { $0 + $1.capacity * 8 + 32 }
    }
}
