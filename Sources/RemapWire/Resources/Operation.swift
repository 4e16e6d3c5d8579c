/// Work remapd does in the background, such as importing a file into a new
/// volume, as the API describes it.
public struct Operation: Decodable, Equatable, Sendable {
    public var id: String
    /// `import`, or a kind newer than this client.
    public var kind: String
    /// `running`, `succeeded`, `failed` or `cancelled`.
    public var state: String
    public var volume: String?
    /// The file being imported.
    public var source: String?
    public var totalBytes: Int?
    public var doneBytes: Int?
    /// 0.0 to 1.0.
    public var progress: Double?
    /// RFC 3339 text, shown as received.
    public var createdAt: String?
    public var finishedAt: String?
    /// Why the operation failed.
    public var error: Problem?

    public var hasFailed: Bool { state == "failed" }

    /// Whether remapd is done with it. A state newer than this client counts
    /// as ended once the operation has a finish time.
    public var hasEnded: Bool { state == "succeeded" || state == "failed" || finishedAt != nil }
}
