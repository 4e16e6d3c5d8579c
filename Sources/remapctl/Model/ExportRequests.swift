/// The body of `POST /v1/exports`.
struct ExportSpec: Encodable, Sendable {
    var volume: String
    var reservation: String?
    /// remapd picks `VOLUME+ID` when omitted.
    var name: String?
}
