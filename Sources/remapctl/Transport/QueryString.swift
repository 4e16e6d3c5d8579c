/// The query part of a request target, `?name=value&…`, with names and
/// values percent-encoded so that a label selector like `app=db` or a page
/// token with `+` or `/` reaches remapd unchanged.
enum QueryString {
    /// `path` followed by the encoded `items`, or `path` alone when there
    /// are none.
    static func target(_ path: String, _ items: [(name: String, value: String)]) -> String {
        guard !items.isEmpty else { return path }
        let pairs = items.map { PathComponent.percentEncoded($0.name) + "=" + PathComponent.percentEncoded($0.value) }
        return path + "?" + pairs.joined(separator: "&")
    }
}
