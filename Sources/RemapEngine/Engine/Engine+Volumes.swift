import Glibc
import RemapCore
import RemapStore

/// Volumes on the control plane: creating, deleting, resizing, listing them.
extension Engine {
    public func volumeInfos() -> [VolumeInfo] {
        (try? volumeInfos { engine in .success(Array(engine.volumes.values)) }) ?? []
    }

    public func volumeInfo(named name: String) throws(RemapError) -> VolumeInfo {
        // invariant: the gather yields exactly one volume or fails
        try volumeInfos { engine in
            engine.volumes[name].map { .success([$0]) } ?? .failure(.notFound(kind: "volume", name: name))
        }[0]
    }

    /// Infos sorted by name. A volume that shares chunks needs them counted
    /// for `guaranteedWritableBytes`: that is done on the caller's thread
    /// from the family's maps (copy-on-write values), never on the engine's.
    private func volumeInfos(_ gather: @escaping @Sendable (Engine) -> Result<[Volume], RemapError>) throws(RemapError) -> [VolumeInfo] {
        let gathered: [(info: VolumeInfo, map: ChunkMap, pooled: UInt64, chunkSize: UInt64, counts: FamilyCounts?)] = try call { [self] reply in
            reply(gather(self).map { list in
                list.sorted { $0.name < $1.name }.map { volume in
                    let pooled = volume.reservations.reduce(UInt64(0)) { $0 + ($1.kind == .pooled ? $1.remaining : 0) }
                    return (volume.info(sharedChunks: 0), volume.map, pooled, volume.pool.chunkSize, familyCounts(volume))
                }
            })
        }
        var counted: [ObjectIdentifier: [UInt8]] = [:]
        return gathered.map { item in
            guard let counts = item.counts else { return item.info }
            var info = item.info
            let family = counted[counts.family] ?? resolve(counts)
            counted[counts.family] = family
            let shared = FamilyView.usage(of: item.map, counts: family).shared
            info.guaranteedWritableBytes = min(info.sizeBytes, (item.map.mappedCount - min(shared, item.map.mappedCount) + item.pooled) * item.chunkSize)
            return info
        }
    }

    /// Creates a volume, durably; returns it and whether it is new (false:
    /// one with the same name and spec existed already).
    public func createVolume(_ spec: VolumeSpec) throws(RemapError) -> (VolumeInfo, created: Bool) {
        try createVolume(spec, forImport: false)
    }

    /// `forImport`: the volume is not exported, patched or deleted until the
    /// import filling it is done.
    func createVolume(_ spec: VolumeSpec, forImport: Bool) throws(RemapError) -> (VolumeInfo, created: Bool) {
        try Name.validate(spec.name, kind: "volume")
        try Volume.validate(sizeBytes: spec.sizeBytes)
        try Labels.validate(spec.labels)
        return try call { [self] reply in
            guard let pool = pools[spec.pool] else { return reply(.failure(.notFound(kind: "pool", name: spec.pool))) }
            if extraExports[spec.name] != nil {
                return reply(.failure(.alreadyExists(kind: "export", name: spec.name,
                                                     detail: "an export named '\(spec.name)' exists; volume names share the export namespace")))
            }
            if let existing = volumes[spec.name] {
                var asked = spec.reservation
                if case .bytes(let bytes) = asked { asked = .bytes((bytes + pool.chunkSize - 1) / pool.chunkSize * pool.chunkSize) }
                guard existing.pool === pool, existing.sizeBytes == spec.sizeBytes, existing.labels == spec.labels,
                      existing.createdReservation == asked
                else {
                    return reply(.failure(.alreadyExists(
                        kind: "volume", name: spec.name,
                        detail: "volume '\(spec.name)' exists with another spec (\(existing.sizeBytes) bytes in pool '\(existing.pool.name)')")))
                }
                let info = existing.info
                if undurable.contains(existing.key) {
                    // Answer only once the first create's rows are durable.
                    commit { result in reply(result.map { (info, false) }) }
                } else {
                    reply(.success((info, false)))
                }
                return
            }
            if let refusal = changeRefusal(pool) { return reply(.failure(refusal)) }
            // Decided at once: a reservation the pool cannot back refuses the volume.
            let chunkSize = pool.chunkSize
            let reservedChunks: UInt64
            switch spec.reservation {
            case .none: reservedChunks = 0
            case .thick: reservedChunks = (spec.sizeBytes + chunkSize - 1) / chunkSize
            case .bytes(let bytes): reservedChunks = (bytes + chunkSize - 1) / chunkSize
            }
            guard pool.unreservedFreeChunks >= reservedChunks else {
                return reply(.failure(.noSpace(requestedBytes: reservedChunks * chunkSize, availableBytes: pool.freeBytes)))
            }
            let volume = Volume(key: nextVolumeKey, id: randomUUID(), name: spec.name, pool: pool,
                                sizeBytes: spec.sizeBytes, createdAt: utcTimestamp(), labels: spec.labels)
            nextVolumeKey += 1
            volumes[volume.name] = volume
            layers[volume.layer] = MappingLayer(images: 1)
            undurable.insert(volume.key)
            if forImport { importing.insert(volume.key) }
            let stored = StoredVolume(key: volume.key, id: volume.id, name: volume.name, pool: pool.name,
                                      sizeBytes: volume.sizeBytes, createdAt: volume.createdAt, labels: volume.labels)
            pending.append(.createVolume(stored))
            durableActions.append { [self] in undurable.remove(volume.key) }
            // A failed commit keeps the volume: its rows are retried, and the
            // error says it is not durable yet.
            let finished: (Result<Void, RemapError>) -> Void = { result in reply(result.map { (volume.info, true) }) }
            let amount: ReservationSpec.Amount
            let role: Reservation.Role
            switch spec.reservation {
            case .none: return commit(finished)
            case .thick: (amount, role) = (.range(offsetBytes: 0, lengthBytes: spec.sizeBytes), .thick)
            case .bytes(let bytes): (amount, role) = (.pooled(bytes: bytes), .volumeDefault)
            }
            reserve(volume, ReservationSpec(amount: amount, ttlSeconds: nil, name: role.rawValue), role: role) { [self] result in
                switch result {
                case .success: finished(.success(()))
                case .failure(let error):
                    // Space went to others while chunks were being prepared: undo the volume.
                    volumes[volume.name] = nil
                    layers[volume.layer] = nil
                    undurable.remove(volume.key)
                    importing.remove(volume.key)
                    pending.append(.deleteVolume(key: volume.key))
                    pending.append(.deleteLayer(key: volume.layer))
                    reply(.failure(error))
                }
            }
        }
    }

    /// Deletes a volume; answers once the deletion is durable and its chunks
    /// are zeroed and free again.
    public func deleteVolume(named name: String) throws(RemapError) {
        try deleteImage { engine in engine.volumes[name].map { .success($0) } ?? .failure(.notFound(kind: "volume", name: name)) }
            delete: { [self] volume, marked, reply in
            if let users = exportUsers[volume.key], users > 0 {
                return reply(.failure(.inUse("volume '\(name)' has \(users) NBD client(s) connected")))
            }
            if importing.contains(volume.key) {
                return reply(.failure(.inUse("volume '\(name)' is being imported")))
            }
            volumes[name] = nil
            for reservation in volume.reservations {
                if reservation.kind == .pooled {
                    volume.pool.pooledReservedChunks -= reservation.remaining
                } else {
                    volume.pool.unwrittenReservedChunks -= reservation.remaining
                }
            }
            volume.reservations = []
            for (exportName, export) in extraExports where export.volume === volume { extraExports[exportName] = nil }
            // Chunks a snapshot or clone still maps stay theirs; the others are
            // zeroed and freed once the deletion is durable. A failed commit
            // keeps the deletion (retried; the error says it is not durable
            // yet), and until then the volume's chunks stay shared.
            let marks = beginLeaving(volume, marked: marked)
            layers[volume.layer]?.images -= 1
            commit(extra: marks + [.deleteVolume(key: volume.key)] + collectLayers(from: volume.layer),
                   onDurable: { [self] in depart(volume, marked: marked) }) { [self] result in
                guard case .success = result else { return reply(result) }
                // What its departure changed is committed next, and its chunks'
                // zeroing queued: answer after both, so the space shows as free.
                commit { [self] _ in submit(CommitJob(syncFDs: [], changes: []) { _ in }) { _ in reply(.success(())) } }
            }
        }
    }

    /// Changes a volume's size and/or labels, durably. Shrinking unmaps
    /// the chunks past the new end (and zeroes the cut-off tail of the last
    /// one), so growing again later reads zeros there.
    public func updateVolume(named name: String, _ patch: VolumePatch) throws(RemapError) -> VolumeInfo {
        if let size = patch.sizeBytes { try Volume.validate(sizeBytes: size) }
        if let labels = patch.labels { try Labels.validate(labels) }
        try call { [self] (reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            applyPatch(volume, patch) { reply($0) }
        }
        // Counted off the engine thread: the volume may share with many snapshots.
        return try volumeInfo(named: name)
    }

    private func applyPatch(_ volume: Volume, _ patch: VolumePatch, tailZeroed: Bool = false,
                            reply: @escaping (Result<Void, RemapError>) -> Void) {
        assertEngineThread()
        let name = volume.name
        if importing.contains(volume.key) { return reply(.failure(.inUse("volume '\(name)' is being imported"))) }
        var changes: [MetadataChange] = []
        if let size = patch.sizeBytes, size != volume.sizeBytes {
            if let refusal = changeRefusal(volume.pool) { return reply(.failure(refusal)) }
            if size < volume.sizeBytes {
                guard patch.allowShrink else {
                    return reply(.failure(.shrinkNotAllowed(
                        "volume '\(name)' is \(volume.sizeBytes) bytes; shrinking to \(size) discards data: pass allowShrink=true")))
                }
                if let users = exportUsers[volume.key], users > 0 {
                    return reply(.failure(.inUse("volume '\(name)' has \(users) NBD client(s) connected")))
                }
            }
            let chunkSize = volume.pool.chunkSize
            let oldSize = volume.sizeBytes
            let pool = volume.pool
            let oldChunks = (oldSize + chunkSize - 1) / chunkSize
            let newChunks = (size + chunkSize - 1) / chunkSize
            let tail = size / chunkSize
            if !tailZeroed, size < oldSize, size % chunkSize != 0, volume.map.lookup(tail) != nil,
               volume.unwrittenOwner(of: tail) == nil {
                // The cut-off part of the last chunk must read zeros if the
                // volume grows again: written with zeros first, through the
                // write path, so a chunk a snapshot shares is copied, not changed.
                let zeros = IOBuffer(count: Int(min((tail + 1) * chunkSize, oldSize) - size))
                memset(zeros.pointer, 0, zeros.count)
                return writeData(volume, offset: size, length: zeros.count, data: zeros.pointer, owner: zeros, bound: nil) { [self] result in
                    guard case .success = result else { return reply(result) }
                    applyPatch(volume, patch, tailZeroed: true, reply: reply)
                }
            }
            let thick = volume.reservations.first { $0.role == .thick && !$0.released }
            if thick != nil, newChunks > oldChunks {
                // A thick volume stays backed as it grows: decided at once.
                let needed = newChunks - oldChunks
                guard pool.unreservedFreeChunks >= needed else {
                    return reply(.failure(.noSpace(requestedBytes: needed * chunkSize, availableBytes: pool.freeBytes)))
                }
                guard pool.cleanChunksAvailable >= needed else {
                    if chunksComing(pool) {
                        return waitForChunks { [self] in applyPatch(volume, patch, tailZeroed: tailZeroed, reply: reply) }
                    }
                    return reply(.failure(noCleanChunks(pool, needed: needed)))
                }
            }
            // Range reservations past the new end end or are cut short.
            for reservation in volume.reservations where newChunks < oldChunks {
                guard let range = reservation.range, range.upperBound > newChunks else { continue }
                let before = reservation.remaining
                if range.lowerBound >= newChunks {
                    reservation.resizeRange(chunkCount: 0)
                    pool.unwrittenReservedChunks -= before
                    reservation.released = true
                    changes.append(.deleteReservation(id: reservation.id))
                } else {
                    reservation.resizeRange(chunkCount: newChunks - range.lowerBound)
                    pool.unwrittenReservedChunks -= before - reservation.remaining
                    changes.append(.resizeReservation(id: reservation.id, chunkCount: reservation.chunkCount))
                }
            }
            volume.reservations.removeAll { $0.released && $0.range != nil && $0.chunkCount == 0 }
            // A snapshot or clone keeps the chunks it shares; the volume lets
            // go of them, not durably yet.
            let dropped = newChunks < oldChunks ? sharedInPlace(volume, in: newChunks..<oldChunks) : []
            let resized = volume.resize(to: size)
            for (virtual, physical) in dropped { releaseShared(volume, virtual: virtual, physical: physical) }
            // Copy-on-write space follows what is left of the range reservations:
            // that of a range cut off ends, that of one cut short shrinks.
            if newChunks < oldChunks, volume.reservations.contains(where: { $0.role == .copyOnWrite }) {
                applyCopyOnWriteNeeds(volume, volume.copyOnWriteNeeds(assumingAllShared: false), growOnly: false)
            }
            if let thick, newChunks > oldChunks {
                thick.resizeRange(chunkCount: newChunks)
                changes.append(.resizeReservation(id: thick.id, chunkCount: newChunks))
                for chunk in oldChunks..<newChunks { changes += reserveCleanChunk(volume, chunk, for: thick) }
                prepareChunks(pool)
            }
            changes.append(.resizeVolume(key: volume.key, sizeBytes: size))
            if hasLayersBelow(volume) {
                // Tombstones hide what the layers below map past the end.
                changes += resized.unmapped.map { .tombstone(layer: volume.layer, virtualChunk: $0) }
            } else {
                changes += resized.unmapped.map { .unmap(volume: volume.layer, virtualChunk: $0) }
            }
            // Zeroed and freed once the change is durable.
            freeChunks(resized.freed.map(\.physicalChunk), of: pool)
        }
        if let labels = patch.labels, labels != volume.labels {
            volume.labels = labels
            changes.append(.setLabels(volume: volume.key, labels: labels))
        }
        guard !changes.isEmpty else { return reply(.success(())) }
        // A failed commit keeps the change in effect: it is retried, and the
        // error says it is not durable yet.
        commit(extra: changes) { [self] result in
            guard case .success = result, patch.sizeBytes != nil else { return reply(result) }
            // Answer after the zeroing of the cut chunks queued as the commit came back.
            submit(CommitJob(syncFDs: [], changes: []) { _ in }) { _ in reply(.success(())) }
        }
    }
}
