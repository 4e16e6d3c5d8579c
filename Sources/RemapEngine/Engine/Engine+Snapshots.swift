import RemapCore
import RemapStore

/// Snapshots, clones and revert on the engine thread.
extension Engine {
    // MARK: - Layers

    /// Collects the layers no image needs any more from layer `key` on
    /// (`MappingLayer.collect`); returns the metadata changes and moves the
    /// images and writes in flight of folded layers to where their rows now are.
    func collectLayers(from key: Int64) -> [MetadataChange] {
        var changes: [MetadataChange] = []
        for step in MappingLayer.collect(&layers, from: key) {
            switch step {
            case .delete(let layer):
                changes.append(.deleteLayer(key: layer))
            case .fold(let child, let into):
                changes.append(.foldLayer(child: child, into: into))
                for image in volumes.values where image.layer == child { image.layer = into }
                for image in snapshots.values where image.layer == child { image.layer = into }
                for (chunk, entry) in unsettled where entry.layer == child { unsettled[chunk]?.layer = into }
            }
        }
        return changes
    }

    // MARK: - Images leaving

    /// What counts the chunks only an image maps, off the engine thread: its
    /// map and those of the images that stay, as they are at one moment
    /// (copy-on-write values: the engine's later writes never reach them).
    struct LeavingView: @unchecked Sendable {  // `image` is only touched on the engine thread
        let image: Volume
        let map: ChunkMap
        let others: [ChunkMap]

        /// Any thread: the chunks none of the others maps.
        func chunksOnlyHere() -> [UInt64] { map.chunks(notMappedBy: others) }
    }

    /// The images that stay when `image` goes: chunks it shares only with
    /// other leaving images are freed when the last of them goes, so they
    /// are marked dirty with each deletion.
    func staying(besides image: Volume) -> [Volume] {
        image.othersNearestFirst.filter { !isLeaving($0) }
    }

    /// Deletes an image in two visits to the engine thread: the first hands
    /// out its map and those of the images that stay; the chunks only it
    /// maps are counted on the caller's thread (a volume may map millions);
    /// the second runs `delete` with them — unless the image's map changed
    /// meanwhile (a write), then it counts again, and the last try counts on
    /// the engine thread. Other images changing meanwhile is harmless: nobody
    /// can start mapping a chunk only this image maps but through a new
    /// snapshot or clone of it (then the chunk is marked dirty needlessly,
    /// and `depart` counts again), and what others copy on write from it
    /// since is freed by `depart`.
    /// `command` names both visits in the engine's timings.
    func deleteImage(command: String = #function, _ find: @escaping @Sendable (Engine) -> Result<Volume, RemapError>,
                     delete: @escaping @Sendable (Volume, [UInt64], @escaping @Sendable (Result<Void, RemapError>) -> Void) -> Void)
        throws(RemapError) {
        for attempt in 0..<3 {
            let view: LeavingView = try call(command) { [self] reply in
                reply(find(self).map { LeavingView(image: $0, map: $0.map, others: staying(besides: $0).map(\.map)) })
            }
            let counted = attempt < 2 ? view.chunksOnlyHere() : nil
            let done: Bool = try call(command) { [self] reply in
                switch find(self) {
                case .failure(let error):
                    reply(.failure(error))
                case .success(let image) where counted != nil && (image !== view.image || image.map.generation != view.map.generation):
                    reply(.success(false))
                case .success(let image):
                    let marked = counted ?? image.chunks(notMappedBy: staying(besides: image))
                    delete(image, marked) { reply($0.map { true }) }
                }
            }
            if done { return }
        }
    }

    /// Starts deleting `image`: it leaves the API and NBD at once, but stays
    /// in its family until the deletion is durable. Until then a crash (and
    /// a failed commit, retried) would bring it back, so nobody may change
    /// the chunks it shares in place: writes copy them as before. Returns
    /// the change marking `marked` dirty — the chunks no image that stays
    /// maps — for the deleting transaction.
    func beginLeaving(_ image: Volume, marked: [UInt64]) -> [MetadataChange] {
        leaving.append(image)
        return marked.isEmpty ? [] : [.markDirtyChunks(pool: image.pool.name, physicalChunks: marked)]
    }

    /// The deletion of `image` is durable: it leaves its family, and the
    /// chunks only it maps now — those of `beginLeaving`, and those copies on
    /// write left to it since (marked dirty with the copy, see `settle`) —
    /// are freed.
    func depart(_ image: Volume, marked: [UInt64]) {
        leaving.removeAll { $0 === image }
        if image.family.members.count == 1, image.family.pendingReleases.isEmpty, UInt64(marked.count) == image.map.mappedCount {
            // Alone: every chunk it maps was marked with the deletion (the
            // common case of a big volume, so nothing per chunk here).
            image.leaveFamily()
            if !marked.isEmpty {
                draining.append((epoch, image.pool, marked))
                epoch += 1
            }
            reclaimDrained()
            return checkThresholds(image.pool)
        }
        // Chunks another image's pending change lets go of are freed by it.
        let only = image.chunksOnlyHere().filter { image.family.pendingReleases[$0] == nil }
        image.leaveFamily()
        let durable = Set(marked)
        // Those marked dirty by the deletion itself are durable: zeroed once
        // older I/O has drained. The others need their mark committed first.
        let ready = only.filter { durable.contains($0) }
        let later = only.filter { !durable.contains($0) }
        if !ready.isEmpty {
            draining.append((epoch, image.pool, ready))
            epoch += 1
        }
        freeChunks(later, of: image.pool)
        for member in image.family.members where !member.isSnapshot && !isLeaving(member) {
            applyCopyOnWriteNeeds(member, member.copyOnWriteNeeds(assumingAllShared: false), growOnly: false)
        }
        if !later.isEmpty { commit { _ in } }
        reclaimDrained()
        checkThresholds(image.pool)
    }

    func isLeaving(_ image: Volume) -> Bool {
        !leaving.isEmpty && leaving.contains { $0 === image }
    }

    // MARK: - Shared chunks let go of

    /// `volume` lets go of `physical` at `virtual` (a copy on write settled,
    /// a TRIM, a revert, a cut) while another image may still map it. Until
    /// the change is durable a crash would give it back to `volume`, so it
    /// stays shared (`Family.pendingReleases`): nobody writes into it in
    /// place. It is marked dirty with the change, in case nobody maps it by
    /// then; `endRelease` frees it if so. A copy on write holds it from the
    /// moment it is planned (`held`).
    func releaseShared(_ volume: Volume, virtual: UInt64, physical: UInt64, held: Bool = false) {
        assertEngineThread()
        let family = volume.family
        let pool = volume.pool
        if !held { family.holdRelease(physical) }
        pending.append(.markDirty(pool: pool.name, physicalChunk: physical))
        durableActions.append { [self] in endRelease(family, pool, virtual: virtual, physical: physical) }
    }

    /// The mappings of `range` that `volume` must let go of through
    /// `releaseShared` when it drops them (a revert, a cut): those another
    /// volume or clone of the family maps at the same place (it could
    /// otherwise write into them in place, and a crash before the drop is
    /// durable would give them back to `volume` changed), and those another
    /// pending change lets go of already (their release must wait for this
    /// one too). Chunks only snapshots share need nothing: snapshots never
    /// change, and a snapshot's deletion, which frees them, commits after
    /// the drop. So without another writable image this visits nothing but
    /// the pending releases, however large the family.
    func sharedInPlace(_ volume: Volume, in range: Range<UInt64>) -> [(virtual: UInt64, physical: UInt64)] {
        let family = volume.family
        let writers = family.members.filter { $0 !== volume && !$0.isSnapshot && !isLeaving($0) }
        guard !writers.isEmpty || !family.pendingReleases.isEmpty else { return [] }
        var shared: [(virtual: UInt64, physical: UInt64)] = []
        volume.map.forEachMapping(in: range) { virtual, physical in
            if family.pendingReleases[physical] != nil
                || writers.contains(where: { virtual < $0.map.virtualChunks && $0.map.lookup(virtual) == physical }) {
                shared.append((virtual, physical))
            }
        }
        return shared
    }

    /// The change that let go of `physical` is durable: if it was the last
    /// one pending and no image maps the chunk any more, it is freed (its
    /// dirty mark is durable already). A mark on a chunk still mapped is
    /// harmless: it goes at the next start.
    func endRelease(_ family: Family, _ pool: Pool, virtual: UInt64, physical: UInt64) {
        family.endRelease(physical)
        guard family.pendingReleases[physical] == nil,
              !family.members.contains(where: { virtual < $0.map.virtualChunks && $0.map.lookup(virtual) == physical })
        else { return }
        draining.append((epoch, pool, [physical]))
        epoch += 1
        reclaimDrained()
    }

    /// Chunks only `image` maps go back to the pool after the next commit
    /// (marked dirty now, zeroed once older I/O has drained).
    func freeChunks(_ chunks: [UInt64], of pool: Pool) {
        for chunk in chunks {
            pending.append(.markDirty(pool: pool.name, physicalChunk: chunk))
            unmapped.append((pool, chunk))
        }
    }

    // MARK: - Lookup

    /// A snapshot by id or `VOLUME@NAME`; with `volume`, also by bare name
    /// among that volume's snapshots.
    func findSnapshot(_ reference: String, of volume: Volume? = nil) -> Volume? {
        if let snapshot = snapshots[reference] { return snapshot }
        if let volume {
            if let found = snapshots.values.first(where: { $0.snapshot?.volumeKey == volume.key && $0.snapshot?.name == reference }) {
                return found
            }
        }
        return snapshots.values.first { $0.exportName == reference }
    }

    /// A snapshot's info; `usage` nil counts it here (rare calls only: the
    /// listing counts off the engine thread, see `snapshotInfos(_:)`).
    func snapshotInfo(_ snapshot: Volume, usage: (unique: UInt64, shared: UInt64)? = nil) -> SnapshotInfo {
        // invariant: only called with snapshots
        let identity = snapshot.snapshot!
        let usage = usage ?? snapshot.usage()
        var reserved: UInt64 = 0
        if let origin = volumes[identity.volume], origin.key == identity.volumeKey {
            reserved = origin.reservations.filter { $0.role == .copyOnWrite }.reduce(0) { $0 + $1.remaining } * snapshot.pool.chunkSize
        }
        return SnapshotInfo(
            id: snapshot.id, name: identity.name, volume: identity.volume, pool: snapshot.pool.name,
            sizeBytes: snapshot.sizeBytes, createdAt: snapshot.createdAt, exportName: snapshot.exportName,
            uniqueBytes: usage.unique * snapshot.pool.chunkSize, sharedBytes: usage.shared * snapshot.pool.chunkSize,
            reservedBytes: reserved)
    }

    /// Infos of `list`, oldest first. Runs on the caller's thread: the
    /// engine hands out the maps (copy-on-write values) and the usage is
    /// counted here, once per family, so a big family never stalls I/O.
    func snapshotInfos(_ gather: @escaping @Sendable (Engine) -> Result<[Volume], RemapError>) throws(RemapError) -> [SnapshotInfo] {
        let gathered: [(info: SnapshotInfo, map: ChunkMap, chunkSize: UInt64, family: Int)]
        let views: [FamilyCounts?]
        (gathered, views) = try call { [self] reply in
            switch gather(self) {
            case .failure(let error): reply(.failure(error))
            case .success(let list):
                var families: [ObjectIdentifier: Int] = [:]
                var views: [FamilyCounts?] = []
                let items = list.sorted { $0.key < $1.key }.map { snapshot in
                    let family = families[ObjectIdentifier(snapshot.family)] ?? {
                        views.append(familyCounts(snapshot))
                        families[ObjectIdentifier(snapshot.family)] = views.count - 1
                        return views.count - 1
                    }()
                    return (snapshotInfo(snapshot, usage: (0, 0)), snapshot.map, snapshot.pool.chunkSize, family)
                }
                reply(.success((items, views)))
            }
        }
        let counts = views.map { $0.map(resolve) }
        return gathered.map { item in
            var info = item.info
            let usage = counts[item.family].map { FamilyView.usage(of: item.map, counts: $0) } ?? (unique: item.map.mappedCount, shared: 0)
            info.uniqueBytes = usage.unique * item.chunkSize
            info.sharedBytes = usage.shared * item.chunkSize
            return info
        }
    }

    // MARK: - Usage counts

    /// A family's reference counts, ready from the cache, or to be counted
    /// by the caller (off the engine thread) and then remembered.
    enum FamilyCounts: Sendable {
        case ready([UInt8], family: ObjectIdentifier)
        case toCount(FamilyView, fingerprint: [UInt64], family: ObjectIdentifier)

        var family: ObjectIdentifier {
            switch self {
            case .ready(_, let family), .toCount(_, _, let family): return family
            }
        }
    }

    /// Engine thread. Nil when the image shares with nobody.
    func familyCounts(_ image: Volume) -> FamilyCounts? {
        guard let view = image.familyView else { return nil }
        let family = ObjectIdentifier(image.family)
        let fingerprint = image.family.fingerprint
        if let cached = usageCache[family], cached.fingerprint == fingerprint { return .ready(cached.counts, family: family) }
        return .toCount(view, fingerprint: fingerprint, family: family)
    }

    /// Any thread: the counts, counting (and caching) them if needed. With
    /// 1,000 snapshots of a 16 GiB volume a count visits 256 M mappings, so
    /// repeated GETs and scrapes of an unchanged family reuse it.
    func resolve(_ counts: FamilyCounts) -> [UInt8] {
        switch counts {
        case .ready(let counts, _):
            return counts
        case .toCount(let view, let fingerprint, let family):
            let counts = view.referenceCounts()
            post { [self] in
                if usageCache.count >= 16 { usageCache.removeAll() }
                usageCache[family] = (fingerprint, counts)
            }
            return counts
        }
    }

    // MARK: - Sticky reservations

    /// Sets the copy-on-write reservations of `volume` to `needs`
    /// (`Volume.copyOnWritePlan`): with `growOnly` the caller checked the space.
    func applyCopyOnWriteNeeds(_ volume: Volume, _ needs: [(range: Reservation, chunks: UInt64)], growOnly: Bool) {
        let plan = volume.copyOnWritePlan(needs, growOnly: growOnly)
        let pool = volume.pool
        for (sticky, target) in plan.resize {
            let change = sticky.hold(target)
            pool.pooledReservedChunks = UInt64(Int64(pool.pooledReservedChunks) + change)
            pending.append(.setReservationRemaining(id: sticky.id, remaining: sticky.durableRemaining))
        }
        for (range, chunks) in plan.create {
            let sticky = Reservation(id: "r-" + randomUUID(), name: range.id, volume: volume, kind: .pooled,
                                     role: .copyOnWrite, chunkCount: chunks)
            sticky.setRemaining(chunks)
            pool.pooledReservedChunks += chunks
            volume.reservations.append(sticky)
            pending.append(.createReservation(StoredReservation(
                id: sticky.id, volume: volume.key, name: range.id, firstChunk: nil, chunkCount: chunks, remaining: chunks,
                role: Reservation.Role.copyOnWrite.rawValue, ttlSeconds: nil, expiresAt: nil)))
        }
        for sticky in plan.release { release(sticky) }
    }

    // MARK: - Control plane (blocking, from other threads)

    /// Takes a snapshot of volume `name`, durably. O(1) in the volume's size:
    /// the map is shared, not copied; metadata gains a layer and a row.
    public func createSnapshot(volume name: String, snapshot snapshotName: String) throws(RemapError) -> (SnapshotInfo, created: Bool) {
        try Name.validate(snapshotName, kind: "snapshot")
        return try call { [self] reply in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            if let existing = findSnapshot(snapshotName, of: volume), existing.snapshot?.volumeKey == volume.key {
                return reply(.success((snapshotInfo(existing), false)))
            }
            if importing.contains(volume.key) {
                return reply(.failure(.inUse("volume '\(name)' is being imported")))
            }
            let exportName = "\(volume.name)@\(snapshotName)"
            if snapshots.values.contains(where: { $0.exportName == exportName }) {
                return reply(.failure(.alreadyExists(kind: "snapshot", name: exportName,
                                                     detail: "a snapshot exported as '\(exportName)' exists (of an earlier volume of that name)")))
            }
            quiesced(volume) { [self] resume in
                defer { resume() }
                guard volumes[name] === volume else { return reply(.failure(.notFound(kind: "volume", name: name))) }
                // Sticky: every written chunk of a range reservation becomes shared.
                let needs = volume.copyOnWriteNeeds(assumingAllShared: true)
                let extra = volume.copyOnWritePlan(needs, growOnly: true).growth
                let pool = volume.pool
                guard pool.unreservedFreeChunks >= extra else {
                    // The range reservations would need this much copy-on-write space to stay writable.
                    return reply(.failure(.noSpace(requestedBytes: extra * pool.chunkSize, availableBytes: pool.freeBytes)))
                }
                applyCopyOnWriteNeeds(volume, needs, growOnly: true)
                let oldLayer = volume.layer
                let newLayer = nextVolumeKey
                let key = nextVolumeKey + 1
                nextVolumeKey += 2
                let snapshot = Volume(snapshotOf: volume, key: key, id: randomUUID(), name: snapshotName,
                                      createdAt: utcTimestamp(), layer: oldLayer)
                // Reserved-unwritten chunks read zeros and stay the volume's.
                var unwritten = 0
                for reservation in volume.reservations where reservation.range != nil {
                    for chunk in reservation.unwrittenChunks {
                        snapshot.map.unmap(chunk)
                        unwritten += 1
                    }
                }
                layers[newLayer] = MappingLayer(parent: oldLayer, children: [], images: 1)
                layers[oldLayer, default: MappingLayer(images: 1)].children.insert(newLayer)
                volume.layer = newLayer
                volume.forgetOwnership()
                snapshots[snapshot.id] = snapshot
                var changes: [MetadataChange] = [
                    .createLayer(key: newLayer, parent: oldLayer),
                    .setVolumeLayer(volume: volume.key, layer: newLayer),
                    .createSnapshot(StoredSnapshot(
                        key: key, id: snapshot.id, name: snapshotName, volumeKey: volume.key, volumeName: volume.name,
                        pool: pool.name, layer: oldLayer, sizeBytes: snapshot.sizeBytes, createdAt: snapshot.createdAt)),
                ]
                if unwritten > 0 {
                    changes.append(.moveUnwritten(from: oldLayer, to: newLayer, tombstone: layers[oldLayer]?.parent != nil))
                }
                checkThresholds(pool)
                commit(extra: changes) { [self] result in
                    if case .success = result {
                        events.record(.snapshotCreated, pool: pool.name, volume: volume.name,
                                      detail: "snapshot '\(snapshot.exportName)' taken")
                    }
                    // Just taken, it shares every chunk with the volume: no need to count.
                    let info = snapshotInfo(snapshot, usage: (0, snapshot.map.mappedCount))
                    reply(result.map { (info, true) })
                }
            }
        }
    }

    public func snapshotInfos(volume name: String?) throws(RemapError) -> [SnapshotInfo] {
        try snapshotInfos { engine in
            guard let name else { return .success(Array(engine.snapshots.values)) }
            guard let volume = engine.volumes[name] else { return .failure(.notFound(kind: "volume", name: name)) }
            return .success(engine.snapshots.values.filter { $0.snapshot?.volumeKey == volume.key })
        }
    }

    public func snapshotInfo(_ reference: String) throws(RemapError) -> SnapshotInfo {
        // invariant: the gather yields exactly one snapshot or fails
        try snapshotInfos { engine in
            engine.findSnapshot(reference).map { .success([$0]) } ?? .failure(.notFound(kind: "snapshot", name: reference))
        }[0]
    }

    /// Deletes a snapshot; the chunks only it mapped are freed, and the
    /// copy-on-write space its volume no longer needs goes back.
    public func deleteSnapshot(_ reference: String) throws(RemapError) {
        try deleteImage { engine in
            engine.findSnapshot(reference).map { .success($0) } ?? .failure(.notFound(kind: "snapshot", name: reference))
        } delete: { [self] snapshot, freed, reply in
            if let users = exportUsers[snapshot.key], users > 0 {
                return reply(.failure(.inUse("snapshot '\(snapshot.exportName)' has \(users) NBD client(s) connected")))
            }
            if let readers = snapshotReaders[snapshot.key], readers > 0 {
                return reply(.failure(.inUse("snapshot '\(snapshot.exportName)' is being read (\(readers) content stream(s))")))
            }
            var changes = beginLeaving(snapshot, marked: freed)
            snapshots[snapshot.id] = nil
            layers[snapshot.layer]?.images -= 1
            changes += [.deleteSnapshot(key: snapshot.key)]
            changes += collectLayers(from: snapshot.layer)
            // A failed commit keeps the deletion (retried); until it is durable
            // the snapshot's chunks stay shared, so nobody changes them in place.
            commit(extra: changes, onDurable: { [self] in depart(snapshot, marked: freed) }) { [self] result in
                guard case .success = result else { return reply(result) }
                events.record(.snapshotDeleted, pool: snapshot.pool.name, volume: snapshot.name,
                              detail: "snapshot '\(snapshot.exportName)' deleted; \(UInt64(freed.count) * snapshot.pool.chunkSize) bytes freed")
                // What its departure changed (the copy-on-write space its volume
                // no longer needs) is durable before the answer too.
                commit { _ in reply(result) }
            }
        }
    }

    /// Makes a writable volume that starts as the snapshot and shares its chunks.
    public func cloneSnapshot(_ reference: String, name: String, labels: [String: String]) throws(RemapError) -> (VolumeInfo, created: Bool) {
        try Name.validate(name, kind: "volume")
        try Labels.validate(labels)
        let created = try cloneVolume(reference, name: name, labels: labels)
        // Counted off the engine thread: a clone shares with its snapshot's family.
        return (try volumeInfo(named: name), created)
    }

    private func cloneVolume(_ reference: String, name: String, labels: [String: String]) throws(RemapError) -> Bool {
        try call { [self] reply in
            guard let snapshot = findSnapshot(reference) else { return reply(.failure(.notFound(kind: "snapshot", name: reference))) }
            if let existing = volumes[name] {
                guard existing.originSnapshot == snapshot.id, existing.labels == labels else {
                    return reply(.failure(.alreadyExists(kind: "volume", name: name,
                                                         detail: "volume '\(name)' exists and is not a clone of '\(snapshot.exportName)' with these labels")))
                }
                // Answer only once the first clone's rows are durable.
                if undurable.contains(existing.key) { return commit { reply($0.map { false }) } }
                return reply(.success(false))
            }
            if extraExports[name] != nil {
                return reply(.failure(.alreadyExists(kind: "export", name: name,
                                                     detail: "an export named '\(name)' exists; volume names share the export namespace")))
            }
            if let refusal = changeRefusal(snapshot.pool) { return reply(.failure(refusal)) }
            let key = nextVolumeKey
            let layer = nextVolumeKey + 1
            nextVolumeKey += 2
            let clone = Volume(key: key, id: randomUUID(), name: name, pool: snapshot.pool, sizeBytes: snapshot.sizeBytes,
                               createdAt: utcTimestamp(), labels: labels)
            clone.leaveFamily()
            clone.family = snapshot.family
            clone.family.members.append(clone)
            clone.map = snapshot.map
            clone.layer = layer
            clone.originSnapshot = snapshot.id
            layers[layer] = MappingLayer(parent: snapshot.layer, children: [], images: 1)
            layers[snapshot.layer]?.children.insert(layer)
            volumes[name] = clone
            undurable.insert(key)
            let stored = StoredVolume(key: key, id: clone.id, name: name, pool: clone.pool.name, sizeBytes: clone.sizeBytes,
                                      createdAt: clone.createdAt, labels: labels, layer: layer, originSnapshot: snapshot.id)
            // A failed commit keeps the clone: its rows are retried, and the
            // error says it is not durable yet.
            commit(extra: [.createLayer(key: layer, parent: snapshot.layer), .createVolume(stored)],
                   onDurable: { [self] in undurable.remove(key) }) { result in
                reply(result.map { true })
            }
        }
    }

    /// Makes volume `name` read exactly what one of its snapshots reads
    /// (size included). Refused while clients are connected.
    public func revertVolume(_ name: String, to reference: String) throws(RemapError) -> VolumeInfo {
        try call { [self] (reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) in
            revert(name, to: reference) { reply($0) }
        }
        // Counted off the engine thread: the volume now shares with its snapshots.
        return try volumeInfo(named: name)
    }

    private func revert(_ name: String, to reference: String, _ reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) {
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            guard let snapshot = findSnapshot(reference, of: volume), snapshot.snapshot?.volumeKey == volume.key else {
                return reply(.failure(.notFound(kind: "snapshot", name: reference)))
            }
            if let users = exportUsers[volume.key], users > 0 {
                return reply(.failure(.inUse("volume '\(name)' has \(users) NBD client(s) connected; disconnect them before a revert")))
            }
            if importing.contains(volume.key) || volumeWrites[volume.key] != nil {
                return reply(.failure(.inUse("volume '\(name)' is being written")))
            }
            if let refusal = changeRefusal(volume.pool) { return reply(.failure(refusal)) }
            let plan: RevertPlan
            do { plan = try volume.revertPlan(to: snapshot) } catch { return reply(.failure(error)) }
            let pool = volume.pool
            let needed = plan.neededChunks
            guard pool.unreservedFreeChunks >= needed else {
                return reply(.failure(.noSpace(requestedBytes: needed * pool.chunkSize, availableBytes: pool.freeBytes)))
            }
            guard pool.cleanChunksAvailable >= plan.fresh.count else {
                if chunksComing(pool) { return waitForChunks { [self] in revert(name, to: reference, reply) } }
                return reply(.failure(noCleanChunks(pool, needed: needed)))
            }
            let kept = Set(plan.keep.map(\.physical))
            let freed = volume.chunksOnlyHere().filter { !kept.contains($0) && volume.family.pendingReleases[$0] == nil }
            // What it shares with others it lets go of, not durably yet.
            let dropped = sharedInPlace(volume, in: 0..<volume.map.virtualChunks)
            for (owner, chunk) in plan.dropUnwritten {
                owner.markWritten(chunk)
                pool.unwrittenReservedChunks -= 1
            }
            let oldLayer = volume.layer
            let newLayer = nextVolumeKey
            nextVolumeKey += 1
            layers[newLayer] = MappingLayer(parent: snapshot.layer, children: [], images: 1)
            layers[snapshot.layer]?.children.insert(newLayer)
            layers[oldLayer]?.images -= 1
            volume.layer = newLayer
            var changes: [MetadataChange] = [
                .createLayer(key: newLayer, parent: snapshot.layer),
                .setVolumeLayer(volume: volume.key, layer: newLayer),
            ]
            if volume.sizeBytes != snapshot.sizeBytes {
                changes.append(.resizeVolume(key: volume.key, sizeBytes: snapshot.sizeBytes))
            }
            volume.replaceMap(with: snapshot.map, sizeBytes: snapshot.sizeBytes)
            for (virtual, physical) in dropped { releaseShared(volume, virtual: virtual, physical: physical) }
            for (chunk, physical) in plan.keep {
                volume.map.map(chunk, to: physical)
                volume.markOwned(chunk)
                changes.append(.reserveChunk(volume: newLayer, virtualChunk: chunk, physicalChunk: physical))
            }
            for (owner, chunk) in plan.fresh { changes += reserveCleanChunk(volume, chunk, for: owner) }
            if !plan.fresh.isEmpty { prepareChunks(pool) }
            let needs = volume.copyOnWriteNeeds(assumingAllShared: false)
            applyCopyOnWriteNeeds(volume, needs, growOnly: true)
            changes += collectLayers(from: oldLayer)
            freeChunks(freed, of: pool)
            applyCopyOnWriteNeeds(volume, needs, growOnly: false)
            commit(extra: changes) { [self] result in
                if case .success = result {
                    events.record(.volumeReverted, pool: volume.pool.name, volume: name,
                                  detail: "volume '\(name)' reverted to snapshot '\(snapshot.exportName)'")
                }
                reply(result)
            }
    }

    /// The byte ranges that differ between a snapshot and `base` (another
    /// snapshot or volume of the pool), or without base the ranges that hold
    /// data; from the chunk maps, at chunk granularity.
    /// The maps are compared on the caller's thread (the engine hands them
    /// out as copy-on-write values): two snapshots far apart differ on most
    /// pages, and comparing those chunk by chunk takes a while.
    public func snapshotChanges(_ reference: String, base baseReference: String?) throws(RemapError) -> SnapshotChanges {
        let (snapshot, base): (ImageView, ImageView?) = try call { [self] reply in
            guard let snapshot = findSnapshot(reference) else { return reply(.failure(.notFound(kind: "snapshot", name: reference))) }
            guard let baseReference else { return reply(.success((ImageView(snapshot), nil))) }
            let volume = snapshot.snapshot.flatMap { volumes[$0.volume] }
            guard let base = findSnapshot(baseReference, of: volume) else {
                return reply(.failure(.notFound(kind: "snapshot", name: baseReference)))
            }
            guard base.pool === snapshot.pool else {
                return reply(.failure(.invalidArgument("base '\(base.exportName)' is in pool '\(base.pool.name)', not '\(snapshot.pool.name)'")))
            }
            reply(.success((ImageView(snapshot), ImageView(base))))
        }
        return SnapshotChanges(snapshot: snapshot.id, map: snapshot.map, sizeBytes: snapshot.sizeBytes, chunkSize: snapshot.chunkSize,
                               base: base.map { ($0.id, $0.map) })
    }
}

/// What a comparison off the engine thread needs of an image: its map
/// (a copy-on-write value) and its shape.
struct ImageView: Sendable {
    let id: String
    let map: ChunkMap
    let sizeBytes: UInt64
    let chunkSize: UInt64

    init(_ image: Volume) {
        id = image.id
        map = image.map
        sizeBytes = image.sizeBytes
        chunkSize = image.pool.chunkSize
    }
}
