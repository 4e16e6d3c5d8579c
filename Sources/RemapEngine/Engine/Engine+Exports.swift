import RemapCore
import RemapStore

/// The exports front ends serve (`ExportDirectory`), and the pins they hold.
extension Engine {
    /// A volume's own export or an extra one (writes draw on the reservation
    /// it is bound to), for I/O. Snapshots are exported read-only as
    /// `VOLUME@SNAPSHOT`; a volume being imported is not exported until the
    /// import is done.
    func export(named name: String) -> VolumeIO? {
        assertEngineThread()
        if let volume = volumes[name] {
            return importing.contains(volume.key) ? nil : VolumeIO(engine: self, volume: volume, name: name, reservation: nil)
        }
        if let export = extraExports[name] {
            guard !importing.contains(export.volume.key) else { return nil }
            return VolumeIO(engine: self, volume: export.volume, name: name, reservation: export.reservation)
        }
        if name.contains("@"), let snapshot = snapshots.values.first(where: { $0.exportName == name }) {
            return VolumeIO(engine: self, volume: snapshot, name: name, reservation: nil)
        }
        return nil
    }

    /// The I/O surface of `image` for the engine's own front ends (imports,
    /// content streams), whatever its export state.
    func volumeIO(for image: Volume) -> VolumeIO {
        VolumeIO(engine: self, volume: image, name: image.exportName, reservation: nil)
    }

    var exportNames: [String] {
        assertEngineThread()
        return (Array(volumes.keys) + Array(extraExports.keys) + snapshots.values.map(\.exportName)).sorted()
    }

    /// A front end serves `volume` through export `exportName` (see
    /// `VolumeIO.attach`): it is neither deleted nor shrunk, nor the extra
    /// export deleted, until `detach`.
    func attach(_ volume: Volume, exportName: String) {
        assertEngineThread()
        exportUsers[volume.key, default: 0] += 1
        if extraExports[exportName] != nil { extraExportUsers[exportName, default: 0] += 1 }
    }

    func detach(_ volume: Volume, exportName: String) {
        assertEngineThread()
        exportUsers[volume.key, default: 1] -= 1
        if let users = extraExportUsers[exportName] { extraExportUsers[exportName] = users - 1 }
    }

    // MARK: - Control plane (blocking, from other threads)

    public func exportInfos() -> [ExportInfo] {
        (try? call { [self] reply in
            var list = volumes.values.map { ExportInfo(name: $0.name, volume: $0.name, reservation: nil) }
            list += extraExports.map { ExportInfo(name: $0.key, volume: $0.value.volume.name, reservation: $0.value.reservation) }
            list += snapshots.values.map { ExportInfo(name: $0.exportName, volume: $0.name, reservation: nil) }
            reply(.success(list.sorted { $0.name < $1.name }))
        }) ?? []
    }

    public func createExport(volume name: String, reservation: String?, exportName: String?) throws(RemapError) -> ExportInfo {
        if let exportName {
            try Name.validate(exportName.replacingPlus(), kind: "export")
        }
        return try call { [self] reply in
            guard let volume = volumes[name] else { return reply(.failure(.notFound(kind: "volume", name: name))) }
            if let reservation {
                guard let bound = volume.reservations.first(where: { $0.id == reservation && !$0.released }) else {
                    return reply(.failure(.notFound(kind: "reservation", name: reservation)))
                }
                guard bound.kind == .pooled else {
                    return reply(.failure(.invalidArgument("only pooled reservations can be bound to an export; \(reservation) is a range")))
                }
            }
            let chosen = exportName ?? (reservation.map { "\(name)+\($0)" } ?? "\(name)+\(randomUUID().prefix(8))")
            guard volumes[chosen] == nil, extraExports[chosen] == nil else {
                return reply(.failure(.alreadyExists(kind: "export", name: chosen, detail: "export '\(chosen)' exists already")))
            }
            extraExports[chosen] = (volume, reservation)
            pending.append(.createExport(name: chosen, volume: volume.key, reservation: reservation))
            commit { result in reply(result.map { ExportInfo(name: chosen, volume: name, reservation: reservation) }) }
        }
    }

    public func deleteExport(named name: String) throws(RemapError) {
        try call { [self] (reply: @escaping @Sendable (Result<Void, RemapError>) -> Void) in
            guard extraExports[name] != nil else {
                if volumes[name] != nil {
                    return reply(.failure(.invalidArgument("'\(name)' is a volume's own export; delete the volume instead")))
                }
                return reply(.failure(.notFound(kind: "export", name: name)))
            }
            if let users = extraExportUsers[name], users > 0 {
                return reply(.failure(.inUse("export '\(name)' has \(users) NBD client(s) connected")))
            }
            extraExports[name] = nil
            pending.append(.deleteExport(name: name))
            commit { result in reply(result) }
        }
    }
}

extension String {
    /// Export names may contain '+' (VOLUME+ID); the rest follows volume names.
    func replacingPlus() -> String { String(map { $0 == "+" ? "-" : $0 }) }
}
