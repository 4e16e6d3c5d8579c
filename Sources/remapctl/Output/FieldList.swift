/// `key: value` lines with the values lined up, for showing one item.
struct FieldList {
    private var fields: [(name: String, value: String)] = []

    init() {}

    /// Adds a line; `value` is shown as given.
    mutating func append(_ name: String, _ value: String) {
        fields.append((name, value))
    }

    /// The fields as lines of text, each ending in a newline.
    func rendered(indent: String = "") -> String {
        let width = (fields.map(\.name.count).max() ?? 0) + 1
        var output = ""
        for field in fields {
            let label = field.name + ":"
            let padding = String(repeating: " ", count: width - label.count + 1)
            output += indent + label + padding + field.value + "\n"
        }
        return output
    }
}
