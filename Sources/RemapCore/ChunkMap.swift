/// A volume's mapping from virtual chunk to physical chunk (pool-wide index).
///
/// Two levels: a directory of pages of 512 entries, a page allocated on the
/// first mapping inside it. Lookup is two array reads; a sparse volume costs
/// memory only where it was written.
public struct ChunkMap: Sendable {
    static let pageShift: UInt64 = 9
    static let pageSize = 1 << pageShift
    static let hole = UInt64.max

    public private(set) var virtualChunks: UInt64
    public private(set) var mappedCount: UInt64 = 0
    private var pages: [[UInt64]?]

    public init(virtualChunks: UInt64) {
        self.virtualChunks = virtualChunks
        self.pages = Array(repeating: nil, count: Int((virtualChunks + UInt64(Self.pageSize) - 1) >> Self.pageShift))
    }

    /// The physical chunk behind `chunk`, or nil for a hole.
    public func lookup(_ chunk: UInt64) -> UInt64? {
        guard let page = pages[Int(chunk >> Self.pageShift)] else { return nil }
        let entry = page[Int(chunk & UInt64(Self.pageSize - 1))]
        return entry == Self.hole ? nil : entry
    }

    /// Maps `chunk` to `physical`; returns what it pointed at before.
    @discardableResult
    public mutating func map(_ chunk: UInt64, to physical: UInt64) -> UInt64? {
        precondition(chunk < virtualChunks, "chunk \(chunk) beyond volume end")
        let pageIndex = Int(chunk >> Self.pageShift)
        if pages[pageIndex] == nil { pages[pageIndex] = Array(repeating: Self.hole, count: Self.pageSize) }
        let slot = Int(chunk & UInt64(Self.pageSize - 1))
        let old = pages[pageIndex]![slot]  // invariant: created just above
        pages[pageIndex]![slot] = physical
        if old == Self.hole { mappedCount += 1; return nil }
        return old
    }

    /// Unmaps `chunk`; returns the physical chunk it held, if any.
    @discardableResult
    public mutating func unmap(_ chunk: UInt64) -> UInt64? {
        let pageIndex = Int(chunk >> Self.pageShift)
        guard pages[pageIndex] != nil else { return nil }
        let slot = Int(chunk & UInt64(Self.pageSize - 1))
        let old = pages[pageIndex]![slot]  // invariant: checked non-nil above
        guard old != Self.hole else { return nil }
        pages[pageIndex]![slot] = Self.hole
        mappedCount -= 1
        return old
    }

    /// Grows (with holes) or shrinks (dropping the mappings past the end).
    public mutating func resize(virtualChunks newCount: UInt64) {
        if newCount < virtualChunks {
            for chunk in newCount..<virtualChunks where lookup(chunk) != nil { unmap(chunk) }
        }
        let pageCount = Int((newCount + UInt64(Self.pageSize) - 1) >> Self.pageShift)
        if pageCount > pages.count {
            pages.append(contentsOf: repeatElement(nil, count: pageCount - pages.count))
        } else {
            pages.removeLast(pages.count - pageCount)
        }
        virtualChunks = newCount
    }

    /// Every mapping, in virtual order.
    public func forEachMapping(_ body: (_ virtual: UInt64, _ physical: UInt64) -> Void) {
        for (pageIndex, page) in pages.enumerated() {
            guard let page else { continue }
            for (slot, entry) in page.enumerated() where entry != Self.hole {
                body(UInt64(pageIndex << Int(Self.pageShift) + slot), entry)
            }
        }
    }
}
