/// Column-aligned text for people: a header row in capitals, then one row
/// per item, columns separated by two spaces and no trailing blanks.
struct Table {
    /// Which side of its column a value hugs; numbers read best on the right.
    enum Alignment {
        case left
        case right
    }

    struct Column {
        var title: String
        var alignment: Alignment = .left
    }

    var columns: [Column]
    var rows: [[String]] = []

    init(_ columns: [Column]) {
        self.columns = columns
    }

    /// Adds a row; it must have one value per column.
    mutating func append(_ row: [String]) {
        precondition(row.count == columns.count, "a table row needs one value per column")
        rows.append(row)
    }

    /// The table as lines of text, each ending in a newline.
    func rendered(indent: String = "") -> String {
        let all = [columns.map(\.title)] + rows
        let widths = columns.indices.map { column in
            all.map { $0[column].count }.max() ?? 0
        }
        var output = ""
        for row in all {
            var line = indent
            for (column, value) in row.enumerated() {
                let padding = String(repeating: " ", count: widths[column] - value.count)
                let isLast = column == row.count - 1
                switch columns[column].alignment {
                case .left: line += isLast ? value : value + padding
                case .right: line += padding + value
                }
                if !isLast { line += "  " }
            }
            output += line + "\n"
        }
        return output
    }
}
