/// The rows of the mappings table, layer by layer: the store streams them
/// (a big pool has millions), tests hand them in.
public protocol MappingLayers {
    /// Every layer key that has rows, with how many.
    func mappingRowCounts() throws(RemapError) -> [Int64: UInt64]
    /// The rows of `layer` in virtual order: `physical` nil is a tombstone
    /// (a hole hiding the layers below); `unwritten` marks a chunk a range
    /// reservation backs and nobody wrote.
    func forEachMapping(
        layer: Int64,
        _ body: (_ virtual: UInt64, _ physical: UInt64?, _ unwritten: Bool) throws(RemapError) -> Void
    ) throws(RemapError)
}

/// What a supplier looks like on the host.
public enum SupplierProbe: Sendable, Equatable {
    /// Opened for reading. `identity` names the file itself (device and
    /// inode), so two suppliers that are one file are told apart from two
    /// paths.
    case present(sizeBytes: UInt64, identity: String)
    case missing
    case unreadable(String)
}

/// `remapd check`: verifies stored metadata offline, like `thin_check`.
///
/// Every image's chunk map is rebuilt from the layers exactly as the
/// engine does at start (`Engine.loadMappings`): a tree's maps start as
/// large as its largest image, each layer's rows go over its parent's
/// (rows past that size are ignored, tombstones unmap), and each image
/// takes its layer's map cut to its own size. Then: every mapped chunk lies
/// in its pool; a physical chunk is mapped by one tree at one virtual chunk
/// only (a volume, its snapshots and their clones share by reference, at
/// the same place); the layers form trees with no cycle, no missing link
/// and no row nobody reads; reservations, exports and dirty chunks name
/// what exists; mapped chunks plus pooled reservations fit the capacity.
///
/// Pure: the caller reads the rows and probes the suppliers. Two images of
/// one tree mapping a chunk at the same virtual chunk through different
/// layer rows pass (the engine treats that as sharing too).
public enum MetadataCheck {
    /// Everything the metadata holds but the mapping rows, and what the
    /// suppliers look like.
    public struct Input: Sendable {
        public var pools: [StoredPool]
        public var volumes: [StoredVolume]
        public var snapshots: [StoredSnapshot]
        /// The `layers` table: key → parent (nil: a root).
        public var layerParents: [Int64: Int64?]
        public var reservations: [StoredReservation]
        public var exports: [StoredExport]
        public var dirtyChunks: [String: [UInt64]]
        /// By supplier id; a supplier missing here is not probed.
        public var suppliers: [String: SupplierProbe]

        public init(pools: [StoredPool], volumes: [StoredVolume], snapshots: [StoredSnapshot] = [],
                    layerParents: [Int64: Int64?] = [:], reservations: [StoredReservation] = [], exports: [StoredExport] = [],
                    dirtyChunks: [String: [UInt64]] = [:], suppliers: [String: SupplierProbe] = [:]) {
            self.pools = pools
            self.volumes = volumes
            self.snapshots = snapshots
            self.layerParents = layerParents
            self.reservations = reservations
            self.exports = exports
            self.dirtyChunks = dirtyChunks
            self.suppliers = suppliers
        }
    }

    /// Checks `input` and the rows of `mappings`; throws only when the rows
    /// cannot be read.
    public static func run(_ input: Input, mappings: some MappingLayers) throws(RemapError) -> MetadataReport {
        var checker = Checker(input)
        try checker.run(mappings)
        return checker.report()
    }
}

// MARK: - The checker

private typealias Kind = MetadataFinding.Kind

/// A pool as the check counts it.
private struct PoolTally {
    let stored: StoredPool
    var capacity: UInt64 = 0
    var claims = ChunkClaims()
    /// Chunks claimed more than once (see `Checker.claim`).
    var conflicted = Set<UInt64>()
    var unwritten: UInt64 = 0
    var reserved: UInt64 = 0
    var dirty: UInt64 = 0
    var volumes = 0
    var snapshots = 0

    var name: String { stored.name }
}

/// A volume or snapshot.
private struct Image {
    let key: Int64
    let id: String
    /// `volume 'a'`, `snapshot 'a@s'`: how findings name it.
    let label: String
    /// For a snapshot: the key of the volume it was taken of.
    let snapshotOf: Int64?
    /// For a clone: the id of the snapshot it was made from.
    let cloneOf: String?
    let layer: Int64
    var isSnapshot: Bool { snapshotOf != nil }
    /// Index into the checker's pools; nil when the pool does not exist.
    let pool: Int?
    let virtualChunks: UInt64
    var root: Int64?
}

private struct LayerNode {
    var parent: Int64?
    /// Has a row in the `layers` table (a volume's first layer has none).
    var stored: Bool
    var children: [Int64] = []
    var images: [Int] = []
}

private struct Checker {
    let input: Input
    var findings = FindingLog()
    var pools: [PoolTally] = []
    var poolIndex: [String: Int] = [:]
    var images: [Image] = []
    var nodes: [Int64: LayerNode] = [:]
    /// Live range reservations by volume key (the engine's owners of
    /// reserved-unwritten marks).
    var ranges: [Int64: [Range<UInt64>]] = [:]
    var rowCount: UInt64 = 0

    typealias Input = MetadataCheck.Input

    init(_ input: Input) { self.input = input }

    mutating func run(_ mappings: some MappingLayers) throws(RemapError) {
        checkPools()
        checkSuppliersAreDistinct()
        collectImages()
        buildLayers()
        checkLayers()
        checkReservations()
        let counts = try mappings.mappingRowCounts()
        rowCount = counts.values.reduce(0, +)
        checkLeaks(rowCounts: counts)
        try resolveTrees(mappings)
        checkExports()
        checkDirtyChunks()
        checkAccounting()
    }

    // MARK: Pools and suppliers

    mutating func checkPools() {
        for stored in input.pools {
            var state = PoolTally(stored: stored)
            let name = stored.name
            let chunkSize = stored.chunkSize
            if !Pool.chunkSizeRange.contains(chunkSize) || chunkSize.nonzeroBitCount != 1 {
                findings.add(.chunkSize, pool: name, about: "",
                             "pool '\(name)' has chunk size \(chunkSize), not a power of two from 4096 to 4194304")
            }
            let suppliers = Dictionary(stored.suppliers.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
            if stored.segments.isEmpty {
                if !stored.suppliers.isEmpty {
                    findings.add(.segmentsMissing, pool: name, about: "",
                                 "pool '\(name)' has no stored segments: the engine lays its suppliers out in order and records that at start")
                }
                if chunkSize > 0 { state.capacity = stored.suppliers.reduce(0) { $0 + $1.sizeBytes / chunkSize } }
            } else {
                state.capacity = checkSegments(of: stored, suppliers: suppliers)
            }
            for supplier in stored.suppliers {
                switch input.suppliers[supplier.id] {
                case nil:
                    break
                case .missing:
                    findings.add(.supplierMissing, pool: name, about: supplier.id,
                                 "supplier \(supplier.path) of pool '\(name)' does not exist")
                case .unreadable(let why):
                    findings.add(.supplierUnreadable, pool: name, about: supplier.id,
                                 "supplier \(supplier.path) of pool '\(name)' cannot be read: \(why)")
                case .present(let size, _):
                    if size < supplier.sizeBytes {
                        findings.add(.supplierShort, pool: name, about: supplier.id,
                                     "supplier \(supplier.path) of pool '\(name)' is \(size) bytes, metadata says \(supplier.sizeBytes)")
                    }
                }
            }
            poolIndex[name] = pools.count
            pools.append(state)
        }
    }

    /// Checks that segments follow each other from chunk 0 within their
    /// suppliers; returns the capacity they give.
    mutating func checkSegments(of pool: StoredPool, suppliers: [String: Supplier]) -> UInt64 {
        var expected: UInt64 = 0
        var used: [String: [Range<UInt64>]] = [:]
        for segment in pool.segments {
            let (end, endOverflow) = segment.firstChunk.addingReportingOverflow(segment.chunks)
            if segment.firstChunk != expected {
                findings.add(.segmentGap, pool: pool.name, about: "\(segment.firstChunk)",
                             "pool '\(pool.name)': a segment starts at chunk \(segment.firstChunk), where chunk \(expected) was due")
            }
            expected = endOverflow ? UInt64.max : max(expected, end)
            guard let supplier = suppliers[segment.supplierID] else {
                findings.add(.segmentSupplier, pool: pool.name, about: "\(segment.firstChunk)",
                             "pool '\(pool.name)': the segment at chunk \(segment.firstChunk) names supplier \(segment.supplierID), which the pool does not have")
                continue
            }
            let (bytes, bytesOverflow) = segment.chunks.multipliedReportingOverflow(by: pool.chunkSize)
            let (byteEnd, offsetOverflow) = segment.supplierOffset.addingReportingOverflow(bytes)
            if bytesOverflow || offsetOverflow || byteEnd > supplier.sizeBytes {
                findings.add(.segmentPastSupplier, pool: pool.name, about: "\(segment.firstChunk)",
                             "pool '\(pool.name)': the segment at chunk \(segment.firstChunk) (\(segment.chunks) chunks at byte \(segment.supplierOffset)) reaches past the \(supplier.sizeBytes) bytes of \(supplier.path)")
                continue
            }
            used[supplier.id, default: []].append(segment.supplierOffset..<byteEnd)
        }
        for (id, extents) in used.sorted(by: { $0.key < $1.key }) {
            let sorted = extents.sorted { $0.lowerBound < $1.lowerBound }
            for (before, after) in zip(sorted, sorted.dropFirst()) where after.lowerBound < before.upperBound {
                findings.add(.segmentOverlap, pool: pool.name, about: "\(id) \(after.lowerBound)",
                             "pool '\(pool.name)': two segments use bytes \(after.lowerBound)..<\(min(before.upperBound, after.upperBound)) of \(suppliers[id]?.path ?? id)")
            }
        }
        return expected
    }

    /// Every supplier is a file of its own: two that are one file (the same
    /// path, or the same device and inode) would hand the same bytes to
    /// two chunk numbers.
    mutating func checkSuppliersAreDistinct() {
        var byFile: [String: [(pool: String, supplier: Supplier)]] = [:]
        for pool in input.pools {
            for supplier in pool.suppliers {
                var file = "path " + supplier.path
                if case .present(_, let identity) = input.suppliers[supplier.id] { file = "file " + identity }
                byFile[file, default: []].append((pool.name, supplier))
            }
        }
        for (file, users) in byFile.sorted(by: { $0.key < $1.key }) where users.count > 1 {
            let names = users.map { "\($0.supplier.path) of pool '\($0.pool)'" }.joined(separator: ", ")
            findings.add(.supplierShared, pool: nil, about: file, "suppliers \(names) are the same file")
        }
    }

    // MARK: Images and layers

    mutating func collectImages() {
        for volume in input.volumes {
            addImage(key: volume.key, id: volume.id, label: "volume '\(volume.name)'", snapshotOf: nil,
                     cloneOf: volume.originSnapshot, layer: volume.layer, pool: volume.pool, sizeBytes: volume.sizeBytes)
        }
        for snapshot in input.snapshots {
            addImage(key: snapshot.key, id: snapshot.id, label: "snapshot '\(snapshot.volumeName)@\(snapshot.name)'",
                     snapshotOf: snapshot.volumeKey, cloneOf: nil, layer: snapshot.layer, pool: snapshot.pool,
                     sizeBytes: snapshot.sizeBytes)
        }
    }

    mutating func addImage(key: Int64, id: String, label: String, snapshotOf: Int64?, cloneOf: String?, layer: Int64,
                           pool name: String, sizeBytes: UInt64) {
        let isSnapshot = snapshotOf != nil
        let pool = poolIndex[name]
        if pool == nil {
            findings.add(.poolMissing, pool: nil, about: "image \(key)", "\(label) names pool '\(name)', which does not exist")
        }
        var size = sizeBytes
        if size > Volume.maximumSize {
            findings.add(.imageSize, pool: name, about: "\(key)",
                         "\(label) is \(size) bytes, more than the largest volume (\(Volume.maximumSize)); checked as that large")
            size = Volume.maximumSize
        }
        var virtualChunks: UInt64 = 0
        if let pool {
            let chunkSize = pools[pool].stored.chunkSize
            if chunkSize > 0 { virtualChunks = (size + chunkSize - 1) / chunkSize }
            if isSnapshot { pools[pool].snapshots += 1 } else { pools[pool].volumes += 1 }
        }
        images.append(Image(key: key, id: id, label: label, snapshotOf: snapshotOf, cloneOf: cloneOf, layer: layer,
                            pool: pool, virtualChunks: virtualChunks, root: nil))
    }

    /// The layer nodes as the engine builds them: the stored rows, plus a
    /// root for every layer an image or a row names without a row of its own.
    mutating func buildLayers() {
        for (key, parent) in input.layerParents { nodes[key] = LayerNode(parent: parent, stored: true) }
        for (index, image) in images.enumerated() {
            nodes[image.layer, default: LayerNode(parent: nil, stored: false)].images.append(index)
        }
        for parent in nodes.values.compactMap(\.parent) where nodes[parent] == nil {
            nodes[parent] = LayerNode(parent: nil, stored: false)
        }
        for (key, node) in nodes.sorted(by: { $0.key < $1.key }) {
            if let parent = node.parent { nodes[parent]?.children.append(key) }
        }
        var roots: [Int64: Int64] = [:]
        var cycles: [Int64: [Int64]] = [:]
        for index in images.indices {
            switch root(of: images[index].layer, roots: &roots, cycles: &cycles) {
            case .success(let root):
                images[index].root = root
            case .failure(let cycle):
                let path = (cycle.layers + [cycle.layers[0]]).map(String.init).joined(separator: " → ")
                findings.add(.layerCycle, pool: nil, about: "\(images[index].key)",
                             "\(images[index].label) reads through layers that form a cycle (\(path)): its chunk map cannot be built")
            }
        }
    }

    struct Cycle: Error { let layers: [Int64] }

    /// The root of `key`'s chain, or the cycle the chain runs into.
    func root(of key: Int64, roots: inout [Int64: Int64], cycles: inout [Int64: [Int64]]) -> Result<Int64, Cycle> {
        var path: [Int64] = []
        var current = key
        let result: Result<Int64, Cycle>
        while true {
            if let root = roots[current] { result = .success(root); break }
            if let cycle = cycles[current] { result = .failure(Cycle(layers: cycle)); break }
            if let start = path.firstIndex(of: current) {
                result = .failure(Cycle(layers: Array(path[start...])))
                break
            }
            path.append(current)
            guard let parent = nodes[current]?.parent else { result = .success(current); break }
            current = parent
        }
        for layer in path {
            switch result {
            case .success(let root): roots[layer] = root
            case .failure(let cycle): cycles[layer] = cycle.layers
            }
        }
        return result
    }

    /// Links the engine relies on: a volume's writes reach no other image,
    /// and every image sits in the tree it belongs to.
    mutating func checkLayers() {
        let volumeByKey = Dictionary(images.filter { !$0.isSnapshot }.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        let snapshotByID = Dictionary(images.filter(\.isSnapshot).map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        for (index, image) in images.enumerated() {
            guard let node = nodes[image.layer] else { continue }
            if !image.isSnapshot {
                let others = node.images.filter { $0 != index }.map { images[$0].label }
                if !others.isEmpty {
                    findings.add(.layerShared, pool: nil, about: "\(image.key)",
                                 "\(image.label) writes to layer \(image.layer), which \(others.joined(separator: ", ")) read(s) too: they would see its writes")
                }
                if !node.children.isEmpty {
                    findings.add(.layerShared, pool: nil, about: "\(image.key) children",
                                 "\(image.label) writes to layer \(image.layer), which has layer(s) \(node.children.map(String.init).joined(separator: ", ")) above it: their images would see its writes")
                }
            }
            guard let root = image.root else { continue }
            // A volume that is no clone grew every layer it reads from its own first one.
            if !image.isSnapshot, image.cloneOf == nil, root != image.key {
                findings.add(.layerMissing, pool: nil, about: "\(image.key)",
                             "\(image.label) (key \(image.key)) reads layers down to layer \(root), not down to its own first layer \(image.key): a layer row is missing")
            }
            if let volumeKey = image.snapshotOf, let volume = volumeByKey[volumeKey], let volumeRoot = volume.root, volumeRoot != root {
                findings.add(.layerMissing, pool: nil, about: "\(image.key)",
                             "\(image.label) is not in the layer tree of \(volume.label) (roots \(root) and \(volumeRoot)): a layer row is missing")
            }
            if let origin = image.cloneOf, let snapshot = snapshotByID[origin], let snapshotRoot = snapshot.root, snapshotRoot != root {
                findings.add(.layerMissing, pool: nil, about: "\(image.key)",
                             "\(image.label) is not in the layer tree of \(snapshot.label), which it was cloned from (roots \(root) and \(snapshotRoot)): a layer row is missing")
            }
        }
        var treePools: [Int64: [(pool: Int, image: Int)]] = [:]
        for (index, image) in images.enumerated() {
            guard let root = image.root, let pool = image.pool else { continue }
            treePools[root, default: []].append((pool, index))
        }
        for (root, members) in treePools.sorted(by: { $0.key < $1.key }) {
            guard let first = members.first, let other = members.first(where: { $0.pool != first.pool }) else { continue }
            findings.add(.treeSpansPools, pool: nil, about: "\(root)",
                         "\(images[first.image].label) (pool '\(pools[first.pool].name)') and \(images[other.image].label) (pool '\(pools[other.pool].name)') share layers (root \(root)) but not a pool")
        }
    }

    /// Layers and rows no image reads: the engine ignores them.
    mutating func checkLeaks(rowCounts: [Int64: UInt64]) {
        var reached = Set<Int64>()
        for image in images where image.root != nil {
            var current: Int64? = image.layer
            while let key = current, reached.insert(key).inserted { current = nodes[key]?.parent }
        }
        let leaked = nodes.filter { $0.value.stored && !reached.contains($0.key) }.keys.sorted()
        for key in leaked {
            let parent = nodes[key]?.parent.map { "parent \($0)" } ?? "a root"
            findings.add(.leakedLayer, pool: nil, about: "\(key)",
                         "layer \(key) (\(parent)) is a layers row no volume or snapshot reaches")
        }
        for (key, count) in rowCounts.sorted(by: { $0.key < $1.key }) where !reached.contains(key) {
            findings.add(.leakedRows, pool: nil, about: "\(key)",
                         "layer \(key) has mapping rows but no volume or snapshot reaches it (they map nothing)", count: count)
        }
    }

    // MARK: Reservations

    mutating func checkReservations() {
        let volumeByKey = Dictionary(images.filter { !$0.isSnapshot }.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        for reservation in input.reservations {
            guard let volume = volumeByKey[reservation.volume] else {
                findings.add(.reservationOrphan, pool: nil, about: reservation.id,
                             "reservation \(reservation.id) belongs to volume key \(reservation.volume), which does not exist")
                continue
            }
            let poolName = volume.pool.map { pools[$0].name }
            if let first = reservation.firstChunk {
                let (end, overflow) = first.addingReportingOverflow(reservation.chunkCount)
                if overflow || end > volume.virtualChunks {
                    findings.add(.reservationRange, pool: poolName, about: reservation.id,
                                 "range reservation \(reservation.id) of \(volume.label) covers chunks \(first)..<\(overflow ? UInt64.max : end), past the volume's \(volume.virtualChunks)")
                }
                ranges[volume.key, default: []].append(first..<(overflow ? UInt64.max : end))
            } else {
                if let pool = volume.pool { pools[pool].reserved += reservation.remaining }
                if reservation.role == Reservation.Role.copyOnWrite.rawValue {
                    checkCopyOnWrite(reservation, of: volume, poolName: poolName)
                } else if reservation.remaining > reservation.chunkCount {
                    findings.add(.reservationOverdrawn, pool: poolName, about: reservation.id,
                                 "pooled reservation \(reservation.id) of \(volume.label) has \(reservation.remaining) chunks left of the \(reservation.chunkCount) it holds")
                }
            }
        }
    }

    /// A copy-on-write reservation holds space for the range reservation it
    /// is named after: at most a chunk per chunk of the range. (Its own
    /// chunk_count is what it held when made; the engine grows `remaining`
    /// past it at later snapshots.)
    mutating func checkCopyOnWrite(_ reservation: StoredReservation, of volume: Image, poolName: String?) {
        let range = input.reservations.first {
            $0.id == reservation.name && $0.volume == reservation.volume && $0.firstChunk != nil
        }
        guard let range else {
            findings.add(.reservationOrphan, pool: poolName, about: reservation.id,
                         "copy-on-write reservation \(reservation.id) of \(volume.label) holds \(reservation.remaining) chunks for range reservation \(reservation.name ?? "(none)"), which does not exist")
            return
        }
        if reservation.remaining > range.chunkCount {
            findings.add(.reservationOverdrawn, pool: poolName, about: reservation.id,
                         "copy-on-write reservation \(reservation.id) of \(volume.label) holds \(reservation.remaining) chunks for range reservation \(range.id) of \(range.chunkCount) chunks")
        }
    }

    // MARK: Chunk maps

    /// Builds every image's map from its tree's layers, as the engine does
    /// at start, and checks the chunks each maps.
    mutating func resolveTrees(_ mappings: some MappingLayers) throws(RemapError) {
        var trees: [Int64: [Int]] = [:]
        for (index, image) in images.enumerated() {
            if let root = image.root { trees[root, default: []].append(index) }
        }
        // Every image's map, in the order claimed (kept for `explainConflicts`:
        // copy-on-write values, so a tree's maps share their pages).
        var resolved: [(index: Int, map: ChunkMap)] = []
        for (root, members) in trees.sorted(by: { $0.key < $1.key }) {
            let largest = members.map { images[$0].virtualChunks }.max() ?? 0
            guard largest > 0 else { continue }
            var tree: [(index: Int, map: ChunkMap)] = []
            var work: [(key: Int64, map: ChunkMap)] = [(root, ChunkMap(virtualChunks: largest))]
            while let (key, inherited) = work.popLast() {
                var map = inherited
                let node = nodes[key]
                // The engine's owner of reserved-unwritten marks: the layer's volume.
                let owner = node?.images.first { !images[$0].isSnapshot }
                try mappings.forEachMapping(layer: key) { (virtual, physical, unwritten) throws(RemapError) in
                    guard virtual < map.virtualChunks else { return }
                    guard let physical else {
                        map.unmap(virtual)
                        return
                    }
                    guard physical <= ChunkMap.maximumPhysicalChunk else {
                        findings.add(.chunkBeyondCapacity, pool: nil, about: "layer \(key)",
                                     "layer \(key) maps physical chunks past any pool (the engine cannot load them)", item: physical)
                        return
                    }
                    map.map(virtual, to: physical)
                    guard unwritten else { return }
                    if let owner, let pool = images[owner].pool, ranges[images[owner].key]?.contains(where: { $0.contains(virtual) }) == true {
                        pools[pool].unwritten += 1
                    } else {
                        findings.add(.unwrittenOrphan, pool: nil, about: "\(key)",
                                     "layer \(key) has reserved-unwritten marks no live range reservation of its volume covers (virtual chunks; the engine clears them at start)",
                                     item: virtual)
                    }
                }
                for index in node?.images ?? [] {
                    var own = map
                    own.resize(virtualChunks: images[index].virtualChunks)
                    checkCapacity(of: index, own)
                    resolved.append((index, own))
                    tree.append((index, own))
                }
                for child in node?.children ?? [] { work.append((child, map)) }
            }
            claim(tree)
        }
        if pools.contains(where: { !$0.conflicted.isEmpty }) { explainConflicts(resolved) }
    }

    /// Chunks an image maps past its pool's capacity.
    mutating func checkCapacity(of index: Int, _ map: ChunkMap) {
        let image = images[index]
        guard let pool = image.pool else { return }
        let capacity = pools[pool].capacity
        map.forEachRun { _, physical, length in
            for chunk in max(physical, capacity)..<max(physical + length, capacity) {
                findings.add(.chunkBeyondCapacity, pool: pools[pool].name, about: "\(image.key)",
                             "\(image.label) maps physical chunks past the pool's capacity of \(capacity) chunks", item: chunk)
            }
        }
    }

    /// Claims the chunks a tree's images map, a bit each: every (virtual,
    /// physical) pair of the tree once (its images share chunks at the same
    /// place), so a chunk claimed twice is mapped at two places or by two
    /// trees. Those are noted for `explainConflicts`.
    mutating func claim(_ tree: [(index: Int, map: ChunkMap)]) {
        var byPool: [Int: [ChunkMap]] = [:]
        for (index, map) in tree {
            if let pool = images[index].pool { byPool[pool, default: []].append(map) }
        }
        for (pool, maps) in byPool.sorted(by: { $0.key < $1.key }) {
            let capacity = pools[pool].capacity
            var conflicted = pools[pool].conflicted
            ChunkMap.forEachDistinctRun(in: maps) { _, physical, length in
                let end = min(physical + length, capacity)
                guard physical < end else { return }
                pools[pool].claims.claim(physical..<end) { conflicted.insert($0) }
            }
            pools[pool].conflicted = conflicted
        }
    }

    /// Names the images behind each conflicting chunk: the images' maps are
    /// walked again in the order they were claimed, keeping who claimed a
    /// chunk first for the conflicting ones only (the first pass kept a bit
    /// per chunk, not who set it).
    mutating func explainConflicts(_ resolved: [(index: Int, map: ChunkMap)]) {
        var first: [Int: [UInt64: UInt64]] = [:]
        for (index, map) in resolved {
            let image = images[index]
            guard let pool = image.pool, !pools[pool].conflicted.isEmpty else { continue }
            let capacity = pools[pool].capacity
            let poolName = pools[pool].name
            map.forEachRun { virtual, physical, length in
                for step in 0..<length where physical + step < capacity && pools[pool].conflicted.contains(physical + step) {
                    let chunk = physical + step
                    let tag = ChunkClaims.tag(image: index, virtual: virtual + step)
                    guard let previous = first[pool]?[chunk] else {
                        first[pool, default: [:]][chunk] = tag
                        continue
                    }
                    let (other, otherVirtual) = ChunkClaims.split(previous)
                    let sameTree = images[other].root == image.root
                    if sameTree && otherVirtual == virtual + step { continue }
                    let pair = other == index ? "\(image.label)" : "\(images[other].label) and \(image.label)"
                    let why = !sameTree ? "which are not snapshots or clones of one another"
                        : other == index ? "at two different virtual chunks" : "at different virtual chunks"
                    findings.add(.chunkConflict, pool: poolName, about: "\(other) \(index) \(sameTree)",
                                 "physical chunks mapped by \(pair), \(why)", item: chunk)
                }
            }
        }
    }

    // MARK: Exports, dirty chunks, accounting

    mutating func checkExports() {
        let keys = Set(images.map(\.key))
        let reservations = Set(input.reservations.map(\.id))
        for export in input.exports {
            if !keys.contains(export.volume) {
                findings.add(.exportOrphan, pool: nil, about: export.name,
                             "export '\(export.name)' names image key \(export.volume), which does not exist")
            }
            if let reservation = export.reservation, !reservations.contains(reservation) {
                findings.add(.exportOrphan, pool: nil, about: export.name + " reservation",
                             "export '\(export.name)' draws on reservation \(reservation), which does not exist")
            }
        }
    }

    mutating func checkDirtyChunks() {
        for (name, chunks) in input.dirtyChunks.sorted(by: { $0.key < $1.key }) {
            guard let pool = poolIndex[name] else {
                findings.add(.poolMissing, pool: nil, about: "dirty \(name)",
                             "dirty chunk rows name pool '\(name)', which does not exist", count: UInt64(chunks.count))
                continue
            }
            pools[pool].dirty = UInt64(chunks.count)
            for chunk in chunks where chunk >= pools[pool].capacity {
                findings.add(.dirtyBeyondCapacity, pool: name, about: "",
                             "dirty chunks past the pool's capacity of \(pools[pool].capacity) chunks", item: chunk)
            }
        }
    }

    mutating func checkAccounting() {
        for pool in pools {
            let needed = pool.claims.count + pool.reserved
            if needed > pool.capacity {
                findings.add(.overcommitted, pool: pool.name, about: "",
                             "pool '\(pool.name)': \(pool.claims.count) mapped chunks and \(pool.reserved) reserved by pooled reservations exceed its \(pool.capacity) chunks")
            }
        }
    }

    func report() -> MetadataReport {
        let figures = pools.map { pool in
            let chunkSize = pool.stored.chunkSize
            let mapped = pool.claims.count
            let free = pool.capacity - min(pool.capacity, mapped + pool.reserved)
            let own = findings.list(pool: pool.name)
            return MetadataReport.PoolFigures(
                name: pool.name, ok: !own.contains { $0.severity == .error }, chunkSizeBytes: chunkSize,
                capacityChunks: pool.capacity, mappedChunks: mapped, unwrittenChunks: pool.unwritten,
                reservedChunks: pool.reserved, freeChunks: free, dirtyChunks: pool.dirty,
                capacityBytes: pool.capacity &* chunkSize, allocatedBytes: (mapped - min(mapped, pool.unwritten)) &* chunkSize,
                reservedBytes: (pool.reserved + pool.unwritten) &* chunkSize, freeBytes: free &* chunkSize,
                volumeCount: pool.volumes, snapshotCount: pool.snapshots, findings: own)
        }
        let known = Set(pools.map(\.name))
        let general = findings.list(pool: nil) + findings.poolNames.filter { !known.contains($0) }.flatMap { findings.list(pool: $0) }
        return MetadataReport(pools: figures, findings: general, volumeCount: input.volumes.count,
                              snapshotCount: input.snapshots.count, layerCount: nodes.count, mappingRowCount: rowCount)
    }
}

// MARK: - Helpers

/// The physical chunks of a pool some image maps, a bit each, in pages of
/// 2^22 chunks made as they are touched (so a corrupt capacity costs
/// nothing); and the tags `explainConflicts` gives the first claimant of a
/// conflicting chunk: the image (index + 1) above bit 40, the virtual chunk
/// below (a virtual chunk is below 2^38: volumes are at most 1 PiB of at
/// least 4 KiB chunks).
private struct ChunkClaims {
    private var pages: [UInt64: [UInt64]] = [:]
    /// Distinct chunks claimed.
    private(set) var count: UInt64 = 0
    private static let virtualMask: UInt64 = (1 << 40) - 1
    private static let pageShift: UInt64 = 22

    static func tag(image: Int, virtual: UInt64) -> UInt64 { UInt64(image + 1) << 40 | (virtual & virtualMask) }
    static func split(_ tag: UInt64) -> (image: Int, virtual: UInt64) { (Int(tag >> 40) - 1, tag & virtualMask) }

    /// Claims the chunks of `range`; `taken` gets each that was claimed already.
    mutating func claim(_ range: Range<UInt64>, taken: (UInt64) -> Void) {
        var chunk = range.lowerBound
        while chunk < range.upperBound {
            let page = chunk >> Self.pageShift
            let word = Int((chunk >> 6) & ((1 << (Self.pageShift - 6)) - 1))
            let base = chunk & ~63
            let bits = ChunkAllocator.bits((chunk - base)..<min(range.upperBound - base, 64))
            let before = pages[page]?[word] ?? 0
            pages[page, default: [UInt64](repeating: 0, count: 1 << (Self.pageShift - 6))][word] = before | bits
            count += UInt64((bits & ~before).nonzeroBitCount)
            var again = before & bits
            while again != 0 {
                taken(base + UInt64(again.trailingZeroBitCount))
                again &= again - 1
            }
            chunk = base + 64
        }
    }
}

/// Findings gathered by subject: a second problem of the same kind about
/// the same thing counts into the first finding (and adds to its sample).
/// At most `listedPerKind` subjects of a kind per pool are listed; the rest
/// are counted in one last finding.
private struct FindingLog {
    private var entries: [(pool: String?, finding: MetadataFinding)] = []
    private var index: [String: Int] = [:]
    private var listed: [String: Int] = [:]
    private var unlisted: [String: (pool: String?, kind: Kind, count: UInt64)] = [:]
    static let listedPerKind = 50

    var poolNames: [String] {
        var seen = Set<String>()
        return entries.compactMap(\.pool).filter { seen.insert($0).inserted }
    }

    /// Adds `count` to the finding of `kind` about `subject` (made with
    /// `detail` the first time), and `item` to its sample.
    mutating func add(_ kind: Kind, pool: String?, about subject: String, _ detail: @autoclosure () -> String,
                      item: UInt64? = nil, count: UInt64 = 1) {
        let kindKey = "\(pool ?? "")\u{0}\(kind.rawValue)"
        let key = "\(kindKey)\u{0}\(subject)"
        if let position = index[key] {
            entries[position].finding.count += count
            if let item, entries[position].finding.sample.count < MetadataFinding.sampleLimit {
                entries[position].finding.sample.append(item)
            }
            return
        }
        guard listed[kindKey, default: 0] < Self.listedPerKind else {
            unlisted[kindKey, default: (pool, kind, 0)].count += 1
            return
        }
        listed[kindKey, default: 0] += 1
        index[key] = entries.count
        entries.append((pool, MetadataFinding(kind: kind, detail: detail(), count: count, sample: item.map { [$0] } ?? [])))
    }

    /// The findings of `pool` (nil: those of no pool), in the order found.
    func list(pool: String?) -> [MetadataFinding] {
        var list = entries.filter { $0.pool == pool }.map(\.finding)
        for (_, more) in unlisted.sorted(by: { $0.key < $1.key }) where more.pool == pool {
            list.append(MetadataFinding(kind: more.kind, detail: "\(more.count) more findings of this kind, not listed", count: more.count))
        }
        return list
    }
}
