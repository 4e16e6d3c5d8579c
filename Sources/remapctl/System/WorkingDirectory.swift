import Glibc

/// The directory remapctl runs in, for turning the relative paths people
/// type into the absolute ones a daemon (or a URI used elsewhere) needs.
enum WorkingDirectory {
    /// `path` made absolute against the working directory; unchanged when it
    /// already is, or when the working directory cannot be read.
    static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/") else { return path }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        let directory = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var relative = Substring(path)
        while relative.hasPrefix("./") { relative = relative.dropFirst(2) }
        return (directory == "/" ? "" : directory) + "/" + relative
    }
}
