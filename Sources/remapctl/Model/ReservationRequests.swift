/// The body of `POST /v1/volumes/{name}/reservations`.
struct ReservationSpec: Encodable, Sendable {
    /// Pooled: this many bytes set aside in the pool.
    var bytes: Int?
    /// Range: the chunks of offsetBytes..<offsetBytes+lengthBytes backed now.
    var offsetBytes: Int?
    var lengthBytes: Int?
    /// A lease: the reservation lapses unless renewed within this time.
    var ttlSeconds: Int?
    var name: String?
}

/// The body of `POST /v1/volumes/{name}/reservations/{id}/renew`; without a
/// TTL remapd renews for the original one.
struct ReservationRenewal: Encodable, Sendable {
    var ttlSeconds: Int?
}
