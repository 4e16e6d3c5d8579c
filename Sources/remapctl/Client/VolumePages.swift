import RemapWire
extension APIClient {
    /// The pages of `GET /v1/volumes` for `query`: the first only, or with
    /// `follow` every page up to the one without a `nextPageToken`.
    ///
    /// - Throws: ``ClientError/unexpectedBody(path:reason:)`` when remapd
    ///   hands out a page token it already gave, which would loop forever.
    func volumePages(_ query: VolumeQuery, follow: Bool) throws(ClientError) -> [Reply<VolumeList<Volume>>] {
        var query = query
        var pages: [Reply<VolumeList<Volume>>] = []
        var seenTokens: Set<String> = []
        while true {
            let page = try volumes(query)
            pages.append(page)
            guard follow, let token = page.value.nextPageToken else { return pages }
            guard seenTokens.insert(token).inserted else {
                throw .unexpectedBody(path: "/v1/volumes", reason: "nextPageToken '\(token)' was already returned")
            }
            query.pageToken = token
        }
    }
}
