/// A mapping layer in metadata as the engine keeps it in memory (see
/// Snapshot.swift): its parent, its children and how many images have it
/// as their own layer (a volume's top, a snapshot's frozen one).
public struct MappingLayer: Equatable, Sendable {
    public var parent: Int64?
    public var children: Set<Int64> = []
    public var images = 0

    public init(parent: Int64? = nil, children: Set<Int64> = [], images: Int = 0) {
        self.parent = parent
        self.children = children
        self.images = images
    }

    /// One step of collecting layers, for metadata and for the images.
    public enum Step: Equatable, Sendable {
        /// The layer goes (no image, no child).
        case delete(Int64)
        /// The child's rows move up into its parent, which takes its place:
        /// images and writes of `child` now belong to `into`.
        case fold(child: Int64, into: Int64)
    }

    /// Drops what no image needs any more from `layers`, starting at layer
    /// `key`: a layer with no image and no child goes (then its parent is
    /// looked at); one with no image and a single child takes that child in
    /// (the child's rows are usually the few written since a snapshot, the
    /// parent's the volume's whole history, so they move up, not down).
    /// Returns the steps taken, in order, for the caller to carry out on
    /// metadata and on the images.
    public static func collect(_ layers: inout [Int64: MappingLayer], from key: Int64) -> [Step] {
        var steps: [Step] = []
        var current: Int64? = key
        while let layerKey = current, let node = layers[layerKey], node.images == 0 {
            current = nil
            if node.children.isEmpty {
                steps.append(.delete(layerKey))
                layers[layerKey] = nil
                if let parent = node.parent {
                    layers[parent]?.children.remove(layerKey)
                    current = parent
                }
            } else if node.children.count == 1, let child = node.children.first, let folded = layers[child] {
                steps.append(.fold(child: child, into: layerKey))
                layers[layerKey] = MappingLayer(parent: node.parent, children: folded.children, images: folded.images)
                layers[child] = nil
                for grandchild in folded.children { layers[grandchild]?.parent = layerKey }
            }
        }
        return steps
    }
}
