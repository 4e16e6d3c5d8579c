extension StringProtocol {
    /// The text without leading and trailing whitespace (spaces, tabs,
    /// newlines), as typed sizes, header values and token files need.
    public var trimmed: String {
        guard let first = firstIndex(where: { !$0.isWhitespace }),
              let last = lastIndex(where: { !$0.isWhitespace })
        else { return "" }
        return String(self[first...last])
    }
}
