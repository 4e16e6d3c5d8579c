/// What backs a pool: a regular (sparse or preallocated) file or a block
/// device. RemapCore only knows its shape; RemapEngine does its I/O.
public struct Supplier: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable { case file, block }

    public var id: String
    public var kind: Kind
    /// Absolute host path.
    public var path: String
    public var sizeBytes: UInt64
    /// The file's blocks were allocated on the host (fallocate), so space
    /// given back by remap stays reserved there (zero-range, not punch).
    public var preallocated: Bool

    public init(id: String, kind: Kind, path: String, sizeBytes: UInt64, preallocated: Bool) {
        self.id = id
        self.kind = kind
        self.path = path
        self.sizeBytes = sizeBytes
        self.preallocated = preallocated
    }
}
