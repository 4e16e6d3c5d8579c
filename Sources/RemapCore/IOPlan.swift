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

/// A chunk that a write mapped for the first time.
public struct NewMapping: Equatable, Sendable {
    public var virtualChunk: UInt64
    public var physicalChunk: UInt64
}

extension Volume {
    /// Phase 1 of a read: where each byte of `[offset, offset+length)` lives.
    /// The range must lie inside the volume.
    public func readPlan(offset: UInt64, length: Int) -> [IOSegment] {
        var segments: [IOSegment] = []
        walk(offset: offset, length: length) { chunk, bufferOffset, inChunk, count in
            let target: IOSegment.Target
            if let physical = map.lookup(chunk) {
                let location = pool.location(of: physical)
                target = .supplier(index: location.supplier, offset: location.offset + inChunk)
            } else {
                target = .zeros
            }
            Self.append(IOSegment(bufferOffset: bufferOffset, length: count, target: target), to: &segments)
        }
        return segments
    }

    /// Phase 1 of a write: maps every hole in the range to a fresh chunk from
    /// the pool and says where each byte goes. On ENOSPC nothing is left
    /// allocated and `.noSpace` is thrown.
    public func writePlan(offset: UInt64, length: Int) throws(RemapError) -> (segments: [IOSegment], newMappings: [NewMapping]) {
        var segments: [IOSegment] = []
        var fresh: [NewMapping] = []
        var shortOfSpace = false
        walk(offset: offset, length: length) { chunk, bufferOffset, inChunk, count in
            guard !shortOfSpace else { return }
            var physical = map.lookup(chunk)
            if physical == nil {
                guard let new = pool.allocator.allocate() else { shortOfSpace = true; return }
                map.map(chunk, to: new)
                fresh.append(NewMapping(virtualChunk: chunk, physicalChunk: new))
                physical = new
            }
            let location = pool.location(of: physical!)  // invariant: set just above
            Self.append(
                IOSegment(bufferOffset: bufferOffset, length: count,
                          target: .supplier(index: location.supplier, offset: location.offset + inChunk)),
                to: &segments)
        }
        if shortOfSpace {
            for mapping in fresh {
                map.unmap(mapping.virtualChunk)
                pool.allocator.release(mapping.physicalChunk)
            }
            let needed = UInt64(fresh.count + 1) * pool.chunkSize
            throw .noSpace(requestedBytes: needed, availableBytes: pool.freeBytes)
        }
        return (segments, fresh)
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
