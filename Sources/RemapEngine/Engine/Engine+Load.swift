import Glibc
import RemapCore
import RemapLog
import RemapStore

/// Loading the engine's state from the metadata store at start, before the
/// engine thread runs (snapshots' mappings: Engine+Snapshots.swift).
extension Engine {
    /// Loads every pool and volume from `store`, opens the suppliers and
    /// zeroes chunks a crash left dirty. Runs on the caller's thread, before
    /// `start()`.
    func load() throws(RemapError) {
        for stored in try store.pools() {
            let indexByID = Dictionary(uniqueKeysWithValues: stored.suppliers.enumerated().map { ($1.id, $0) })
            var segments: [Pool.Segment] = []
            for segment in stored.segments {
                guard let index = indexByID[segment.supplierID] else {
                    throw .internal("metadata: segment of pool '\(stored.name)' names unknown supplier \(segment.supplierID)")
                }
                segments.append(Pool.Segment(firstChunk: segment.firstChunk, supplier: index,
                                             supplierOffset: segment.supplierOffset, chunks: segment.chunks))
            }
            let pool = try Pool(name: stored.name, chunkSize: stored.chunkSize, suppliers: stored.suppliers, segments: segments)
            if segments.isEmpty {
                // A state directory from before segments were stored: record the layout.
                try store.apply(pool.segments.map { .addSegment(pool: pool.name, segment: storedSegment($0, of: pool)) })
            }
            pool.onNoSpace = stored.queueSeconds > 0 ? .queue(seconds: stored.queueSeconds) : .error
            pool.lowSpaceThresholds = stored.thresholds
            pools[pool.name] = pool
            openSuppliers(of: pool)
        }
        var byKey: [Int64: Volume] = [:]
        for stored in try store.volumes() {
            guard let pool = pools[stored.pool] else {
                throw .internal("metadata: volume '\(stored.name)' names missing pool '\(stored.pool)'")
            }
            let volume = Volume(key: stored.key, id: stored.id, name: stored.name, pool: pool,
                                sizeBytes: stored.sizeBytes, createdAt: stored.createdAt, labels: stored.labels)
            volume.layer = stored.layer
            volume.originSnapshot = stored.originSnapshot
            volumes[volume.name] = volume
            byKey[volume.key] = volume
            nextVolumeKey = max(nextVolumeKey, volume.key + 1, stored.layer + 1)
        }
        for stored in try store.reservations() {
            guard let volume = byKey[stored.volume] else { continue }
            let reservation = Reservation(
                id: stored.id, name: stored.name, volume: volume,
                kind: stored.firstChunk.map { .range(firstChunk: $0) } ?? .pooled,
                role: Reservation.Role(rawValue: stored.role) ?? .plain, chunkCount: stored.chunkCount,
                ttlSeconds: stored.ttlSeconds, expiresAt: stored.expiresAt)
            if reservation.kind == .pooled {
                reservation.setRemaining(stored.remaining)
                volume.pool.pooledReservedChunks += stored.remaining
            }
            volume.reservations.append(reservation)
        }
        let orphans = try loadMappings(volumes: byKey)
        try store.apply(orphans)
        for stored in try store.exports() {
            guard let volume = byKey[stored.volume] else { continue }
            extraExports[stored.name] = (volume, stored.reservation)
        }
        // Chunks freed (or prepared for writes) before a crash may hold
        // data nobody maps: zero them. Mapped ones just lose the mark.
        // Chunks that cannot be zeroed now (the pool is offline, or zeroing
        // fails) stay allocated and dirty, and are tried again later.
        for (poolName, chunks) in try store.dirtyChunks() {
            guard let pool = pools[poolName] else { continue }
            let mapped = chunks.filter { pool.allocator.isUsed($0) }
            let free = chunks.filter { !pool.allocator.isUsed($0) && $0 < pool.allocator.capacity }
            try store.apply(mapped.map { .clearDirty(pool: poolName, physicalChunk: $0) })
            guard !free.isEmpty else { continue }
            for chunk in free { pool.allocator.markUsed(chunk) }
            guard pool.state != .offline else {
                reclaimRetries.append((pool, free, 0))
                continue
            }
            let outcome = Committer.perform(zeroJob(pool: pool, chunks: free), store: store, faults: faults)
            noteFailedSyncs(outcome.failedSyncs, during: "write-back (fdatasync) of zeroed chunks")
            switch outcome.zeroed {
            case .success?:
                for chunk in free { pool.allocator.release(chunk) }
            case .failure(let error)?:
                log.warning("zeroing \(free.count) freed chunk(s) of pool '\(poolName)' at start failed: \(error); tried again later")
                reclaimRetries.append((pool, free, monotonicNanoseconds() + Self.reclaimRetryInterval))
            case nil:
                break
            }
        }
    }

    func storedSegment(_ segment: Pool.Segment, of pool: Pool) -> StoredSegment {
        StoredSegment(firstChunk: segment.firstChunk, supplierID: pool.suppliers[segment.supplier].id,
                      supplierOffset: segment.supplierOffset, chunks: segment.chunks)
    }

    /// Creates pool `name` on one new file supplier at `path` if no pool
    /// exists yet. Runs before `start()`.
    public func bootstrapPool(name: String, path: String, sizeBytes: UInt64, chunkSize: UInt64 = Pool.defaultChunkSize) throws(RemapError) {
        guard pools.isEmpty else { return }
        let (supplier, fd) = try SupplierFile.create(path: path, sizeBytes: sizeBytes, preallocate: true)
        let pool: Pool
        do throws(RemapError) {
            pool = try Pool(name: name, chunkSize: chunkSize, suppliers: [supplier], maximumChunks: limits.maxChunksPerPool)
        } catch {
            SupplierFile.discard([(supplier, fd)])
            throw error
        }
        try store.apply([.createPool(name: name, chunkSize: chunkSize), .addSupplier(pool: name, ordinal: 0, supplier: supplier)]
            + pool.segments.map { .addSegment(pool: name, segment: storedSegment($0, of: pool)) })
        pools[name] = pool
        supplierFDs[name] = [fd]
    }

    // MARK: - Mappings and layers

    /// Rebuilds every image's chunk map from the layers: each layer's rows
    /// over its parent's, from the roots up; marks what they map as used.
    /// Returns fixes for unwritten marks no reservation owns.
    func loadMappings(volumes byKey: [Int64: Volume]) throws(RemapError) -> [MetadataChange] {
        var nodes: [Int64: MappingLayer] = [:]
        for (key, parent) in try store.layerParents() { nodes[key] = MappingLayer(parent: parent) }
        for volume in byKey.values where nodes[volume.layer] == nil { nodes[volume.layer] = MappingLayer() }
        var images: [Int64: [Volume]] = [:]
        for volume in byKey.values { images[volume.layer, default: []].append(volume) }
        for stored in try store.snapshots() {
            guard let pool = pools[stored.pool] else {
                throw .internal("metadata: snapshot '\(stored.name)' names missing pool '\(stored.pool)'")
            }
            let snapshot = Volume(
                key: stored.key, id: stored.id,
                snapshot: SnapshotIdentity(name: stored.name, volume: stored.volumeName, volumeKey: stored.volumeKey),
                pool: pool, sizeBytes: stored.sizeBytes, createdAt: stored.createdAt, layer: stored.layer, family: Family())
            snapshots[snapshot.id] = snapshot
            images[stored.layer, default: []].append(snapshot)
            if nodes[stored.layer] == nil { nodes[stored.layer] = MappingLayer() }
            nextVolumeKey = max(nextVolumeKey, stored.key + 1, stored.layer + 1)
        }
        // A volume's first layer is its key and has no row of its own: a
        // parent with no row is such a root.
        for parent in nodes.values.compactMap(\.parent) where nodes[parent] == nil { nodes[parent] = MappingLayer() }
        for (key, node) in nodes {
            nextVolumeKey = max(nextVolumeKey, key + 1)
            guard let parent = node.parent else { continue }
            nodes[parent]!.children.insert(key)  // invariant: every parent has a node (just above)
        }
        for (key, list) in images { nodes[key]?.images = list.count }
        // Never hand out a key that rows still use.
        if let key = try store.largestMappedLayer() { nextVolumeKey = max(nextVolumeKey, key + 1) }
        layers = nodes

        var orphans: [MetadataChange] = []
        for (root, node) in nodes where node.parent == nil {
            // Every image of the tree fits in the largest one's size.
            var largest: UInt64 = 0
            var tree: [Volume] = []
            var stack = [root]
            while let key = stack.popLast() {
                for image in images[key] ?? [] {
                    largest = max(largest, image.map.virtualChunks)
                    tree.append(image)
                }
                stack += nodes[key]?.children ?? []
            }
            guard !tree.isEmpty else { continue }
            let family = Family()
            for image in tree.sorted(by: { $0.key < $1.key }) {
                image.leaveFamily()
                image.family = family
                family.members.append(image)
            }
            var work: [(key: Int64, map: ChunkMap)] = [(root, ChunkMap(virtualChunks: largest))]
            while let (key, inherited) = work.popLast() {
                var map = inherited
                let owner = images[key]?.first { !$0.isSnapshot }
                try store.forEachMapping(layer: key) { (virtual, physical, unwritten) throws(RemapError) in
                    guard virtual < map.virtualChunks else { return }
                    guard let physical else {
                        map.unmap(virtual)
                        return
                    }
                    map.map(virtual, to: physical)
                    if unwritten {
                        if let owner, let reservation = owner.rangeReservation(covering: virtual) {
                            // A write may have reached it before a crash without its mark
                            // being committed: it reads zeros, and its first write fills it.
                            reservation.markUnwritten(virtual, clean: false)
                            owner.pool.unwrittenReservedChunks += 1
                        } else {
                            orphans.append(.markWritten(volume: key, virtualChunk: virtual))
                        }
                    }
                }
                for image in images[key] ?? [] {
                    var own = map
                    own.resize(virtualChunks: image.map.virtualChunks)
                    image.map = own
                }
                for child in nodes[key]?.children ?? [] { work.append((child, map)) }
            }
            for image in tree {
                let pool = image.pool
                var invalid: UInt64?
                image.map.forEachRun { _, physical, length in
                    guard physical + length <= pool.allocator.capacity else { invalid = physical; return }
                    for chunk in physical..<(physical + length) where !pool.allocator.isUsed(chunk) {
                        pool.allocator.markUsed(chunk)
                    }
                }
                if let invalid {
                    throw .internal("metadata: image '\(image.exportName)' maps chunk \(invalid) beyond pool '\(pool.name)'")
                }
            }
        }
        return orphans
    }
}
