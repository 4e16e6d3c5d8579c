/// One piece of a data request after mapping: `length` bytes at
/// `bufferOffset` of the request's buffer, either zeros (a hole) or a range
/// of one supplier. Adjacent pieces that are contiguous on the same supplier
/// are merged into one.
public struct IOSegment: Equatable, Sendable {
    public enum Target: Equatable, Sendable {
        case zeros
        case supplier(index: Int, offset: UInt64)
    }

    public var bufferOffset: Int
    public var length: Int
    public var target: Target

    public init(bufferOffset: Int, length: Int, target: Target) {
        self.bufferOffset = bufferOffset
        self.length = length
        self.target = target
    }
}

/// One chunk's share of a TRIM or WRITE_ZEROES.
public struct ZeroPiece: Equatable, Sendable {
    public var virtualChunk: UInt64
    /// What the chunk maps to now; nil for a hole.
    public var physicalChunk: UInt64?
    public var offsetInChunk: UInt64
    public var length: UInt64
    /// The range covers the whole chunk (or all of a short last chunk).
    public var whole: Bool
}

/// A chunk that a write mapped for the first time.
public struct NewMapping: Equatable, Sendable {
    public var virtualChunk: UInt64
    public var physicalChunk: UInt64
}

/// A chunk a write found shared with a snapshot or clone: it goes to a new
/// chunk. `bufferOffset`/`length`/`offsetInChunk` say which part of the
/// write lands in it; a partial one copies the rest of the old chunk first.
public struct CopyOnWrite: Equatable, Sendable {
    public var virtualChunk: UInt64
    public var oldPhysical: UInt64
    public var newPhysical: UInt64
    public var bufferOffset: Int
    public var length: Int
    public var offsetInChunk: UInt64
    /// The write covers the whole chunk: nothing to copy.
    public var whole: Bool
}

/// A write into a reserved-unwritten chunk that may hold bytes (see
/// `Reservation.mayHoldData`). Until it is written the chunk reads zeros,
/// whatever a crash or a failed fill left in it; so its first write is of
/// the whole chunk — zeros with the write's part (`bufferOffset`, `length`,
/// at `offsetInChunk`) laid over them, unless it covers all of it (`whole`)
/// — and no other I/O touches the chunk until it is written. A clean
/// unwritten chunk (the usual case) is written in place.
public struct ChunkFill: Equatable, Sendable {
    public var virtualChunk: UInt64
    public var physicalChunk: UInt64
    public var bufferOffset: Int
    public var length: Int
    public var offsetInChunk: UInt64
    public var whole: Bool

    public init(virtualChunk: UInt64, physicalChunk: UInt64, bufferOffset: Int, length: Int, offsetInChunk: UInt64,
                whole: Bool) {
        self.virtualChunk = virtualChunk
        self.physicalChunk = physicalChunk
        self.bufferOffset = bufferOffset
        self.length = length
        self.offsetInChunk = offsetInChunk
        self.whole = whole
    }
}

/// Phase 1 of a write: where its bytes go, the chunks it maps for the first
/// time, and the chunks it copies on write or fills (whose bytes are not in
/// `segments`: each is written as one whole chunk).
public struct WritePlan: Sendable {
    public var segments: [IOSegment] = []
    public var newMappings: [NewMapping] = []
    public var copies: [CopyOnWrite] = []
    public var fills: [ChunkFill] = []
}

extension Volume {
    /// Phase 1 of a read: where each byte of `[offset, offset+length)` lives.
    /// The range must lie inside the volume.
    public func readPlan(offset: UInt64, length: Int) -> [IOSegment] {
        var segments: [IOSegment] = []
        walk(offset: offset, length: length) { chunk, bufferOffset, inChunk, count in
            let target: IOSegment.Target
            // Reserved-unwritten chunks read zeros without I/O, whatever they hold.
            if let physical = map.lookup(chunk), unwrittenOwner(of: chunk) == nil {
                let location = pool.location(of: physical)
                target = .supplier(index: location.supplier, offset: location.offset + inChunk)
            } else {
                target = .zeros
            }
            Self.append(IOSegment(bufferOffset: bufferOffset, length: count, target: target), to: &segments)
        }
        return segments
    }

    /// Phase 1 of a write: maps every hole in the range to a fresh chunk
    /// from the pool and says where each byte goes. Without a `source`,
    /// chunks come from the pool's unreserved free space. On ENOSPC nothing
    /// is left allocated and `.noSpace` is thrown.
    public func writePlan(offset: UInt64, length: Int, source: (any ChunkSource)? = nil) throws(RemapError)
        -> (segments: [IOSegment], newMappings: [NewMapping])
    {
        let plan = try plannedWrite(offset: offset, length: length, source: source)
        return (plan.segments, plan.newMappings)
    }

    /// Phase 1 of a write with copy on write: holes get fresh chunks, chunks
    /// shared with another image get new ones (`copies`). On ENOSPC the map
    /// is as before, every chunk taken is given back, and `.noSpace` is thrown.
    public func plannedWrite(offset: UInt64, length: Int, source: (any ChunkSource)? = nil) throws(RemapError) -> WritePlan {
        let source = source ?? UnreservedChunks(pool: pool)
        var plan = WritePlan()
        var shortOfSpace = false
        let chunkSize = pool.chunkSize
        // A new chunk is known to be this image's alone only once the whole
        // plan stands: an ENOSPC below puts the shared chunks back, and a
        // stale "owned" mark would let the retry overwrite them in place.
        walk(offset: offset, length: length) { chunk, bufferOffset, inChunk, count in
            guard !shortOfSpace else { return }
            var physical = map.lookup(chunk)
            if physical == nil {
                guard let new = source.take(for: chunk, copyOnWrite: false) else { shortOfSpace = true; return }
                map.map(chunk, to: new)
                plan.newMappings.append(NewMapping(virtualChunk: chunk, physicalChunk: new))
                physical = new
            } else if let old = physical, isShared(chunk, old) {
                guard let new = source.take(for: chunk, copyOnWrite: true) else { shortOfSpace = true; return }
                map.map(chunk, to: new)
                plan.newMappings.append(NewMapping(virtualChunk: chunk, physicalChunk: new))
                let chunkEnd = min(chunkSize, sizeBytes - chunk * chunkSize)
                plan.copies.append(CopyOnWrite(
                    virtualChunk: chunk, oldPhysical: old, newPhysical: new, bufferOffset: bufferOffset, length: count,
                    offsetInChunk: inChunk, whole: inChunk == 0 && UInt64(count) >= chunkEnd))
                return
            } else if let unwritten = physical, let owner = unwrittenOwner(of: chunk), owner.mayHoldData(chunk) {
                plan.fills.append(ChunkFill(
                    virtualChunk: chunk, physicalChunk: unwritten, bufferOffset: bufferOffset, length: count,
                    offsetInChunk: inChunk, whole: inChunk == 0 && UInt64(count) >= min(chunkSize, sizeBytes - chunk * chunkSize)))
                return
            }
            let location = pool.location(of: physical!)  // invariant: set just above
            Self.append(
                IOSegment(bufferOffset: bufferOffset, length: count,
                          target: .supplier(index: location.supplier, offset: location.offset + inChunk)),
                to: &plan.segments)
        }
        if shortOfSpace {
            let copied = Dictionary(uniqueKeysWithValues: plan.copies.map { ($0.virtualChunk, $0.oldPhysical) })
            for mapping in plan.newMappings.reversed() {
                if let old = copied[mapping.virtualChunk] {
                    map.map(mapping.virtualChunk, to: old)
                } else {
                    map.unmap(mapping.virtualChunk)
                }
                source.giveBack(mapping.physicalChunk)
            }
            let needed = UInt64(plan.newMappings.count + 1) * pool.chunkSize
            throw .noSpace(requestedBytes: needed, availableBytes: pool.freeBytes)
        }
        for mapping in plan.newMappings { markOwned(mapping.virtualChunk) }
        return plan
    }

    /// The pieces of `[offset, offset+length)` for TRIM and WRITE_ZEROES:
    /// each chunk touched, whether the range covers it whole, and what it
    /// maps to now.
    public func zeroPlan(offset: UInt64, length: Int) -> [ZeroPiece] {
        var pieces: [ZeroPiece] = []
        walk(offset: offset, length: length) { chunk, _, inChunk, count in
            let whole = inChunk == 0 && (UInt64(count) == pool.chunkSize
                || offset + UInt64(length) == sizeBytes && chunk == map.virtualChunks - 1)
            pieces.append(ZeroPiece(virtualChunk: chunk, physicalChunk: map.lookup(chunk),
                                    offsetInChunk: inChunk, length: UInt64(count), whole: whole))
        }
        return pieces
    }

    /// Runs of mapped and unmapped bytes from `offset`, at most `length`
    /// bytes and `maximumRuns` runs (for NBD block status).
    public func allocationRuns(offset: UInt64, length: UInt64, maximumRuns: Int) -> [(length: UInt64, mapped: Bool)] {
        var runs: [(length: UInt64, mapped: Bool)] = []
        let end = offset + length
        var position = offset
        while position < end {
            let chunk = position / pool.chunkSize
            let mapped = map.lookup(chunk) != nil
            let count = min((chunk + 1) * pool.chunkSize, end) - position
            if let last = runs.last, last.mapped == mapped {
                runs[runs.count - 1].length += count
            } else {
                if runs.count == maximumRuns { break }
                runs.append((count, mapped))
            }
            position += count
        }
        return runs
    }

    private func walk(offset: UInt64, length: Int, _ body: (UInt64, Int, UInt64, Int) -> Void) {
        let chunkSize = pool.chunkSize
        var done = 0
        while done < length {
            let position = offset + UInt64(done)
            let chunk = position / chunkSize
            let inChunk = position % chunkSize
            let count = min(Int(chunkSize - inChunk), length - done)
            body(chunk, done, inChunk, count)
            done += count
        }
    }

    private static func append(_ segment: IOSegment, to segments: inout [IOSegment]) {
        if var last = segments.last, last.bufferOffset + last.length == segment.bufferOffset {
            switch (last.target, segment.target) {
            case (.zeros, .zeros):
                last.length += segment.length
                segments[segments.count - 1] = last
                return
            case (.supplier(let a, let offsetA), .supplier(let b, let offsetB))
                where a == b && offsetA + UInt64(last.length) == offsetB:
                last.length += segment.length
                segments[segments.count - 1] = last
                return
            default: break
            }
        }
        segments.append(segment)
    }
}

/// Where a write's new chunks come from: reservations it may draw on, then
/// free space. `giveBack` undoes `take`s in reverse order.
public protocol ChunkSource: AnyObject {
    /// A chunk for virtual chunk `virtual`; `copyOnWrite` when it replaces
    /// a chunk shared with a snapshot (sticky reservations cover those).
    func take(for virtual: UInt64, copyOnWrite: Bool) -> UInt64?
    func giveBack(_ chunk: UInt64)
}

/// Chunks from the pool's free space that no reservation holds.
public final class UnreservedChunks: ChunkSource {
    let pool: Pool

    public init(pool: Pool) { self.pool = pool }

    public func take(for virtual: UInt64, copyOnWrite: Bool) -> UInt64? {
        guard pool.unreservedFreeChunks > 0 else { return nil }
        return pool.takeChunk()
    }

    public func giveBack(_ chunk: UInt64) { pool.returnChunk(chunk) }
}
