/// A strict RFC 8259 parser: remapd reads request bodies with it, remapctl
/// the daemon's answers.
///
/// Foundation's JSONDecoder accepts trailing commas (`{"a": 1,}`) and
/// duplicate keys (keeping the first), so two parsers (a proxy's and
/// remapd's) could read one body two ways. This one refuses both, and
/// everything else RFC 8259 does not allow, naming what and where.
/// Nesting is limited, so a deep body cannot exhaust the thread's stack.
public struct JSONParser {
    /// Deeper than any body of the API.
    public static let maximumDepth = 64

    /// Why the bytes are not JSON, and where.
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public let message: String
        /// The byte at which parsing stopped, from 0.
        public let offset: Int
        public var description: String { "\(message) at byte \(offset)" }
    }

    private let bytes: [UInt8]
    private var position = 0

    /// Parses one JSON value filling all of `bytes` (whitespace around it
    /// allowed).
    public static func parse(_ bytes: [UInt8]) throws(Failure) -> JSONValue {
        var parser = JSONParser(bytes: bytes)
        parser.skipWhitespace()
        let value = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.position == bytes.count else { throw parser.failure("unexpected text after the JSON value") }
        return value
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private func failure(_ message: String) -> Failure { Failure(message: message, offset: position) }

    private var current: UInt8? { position < bytes.count ? bytes[position] : nil }

    private mutating func skipWhitespace() {
        while let byte = current, byte == 0x20 || byte == 0x09 || byte == 0x0a || byte == 0x0d { position += 1 }
    }

    private mutating func value(depth: Int) throws(Failure) -> JSONValue {
        guard depth < Self.maximumDepth else { throw failure("nested deeper than \(Self.maximumDepth) levels") }
        guard let byte = current else { throw failure("unexpected end of input") }
        switch byte {
        case UInt8(ascii: "{"): return try object(depth: depth)
        case UInt8(ascii: "["): return try array(depth: depth)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw failure("unexpected character")
        }
    }

    private mutating func literal(_ word: StaticString) throws(Failure) {
        let expected = UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
        guard bytes.count - position >= expected.count, bytes[position..<position + expected.count].elementsEqual(expected) else {
            throw failure("unexpected character")
        }
        position += expected.count
    }

    private mutating func object(depth: Int) throws(Failure) -> JSONValue {
        position += 1  // {
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if current == UInt8(ascii: "}") {
            position += 1
            return .object(members)
        }
        while true {
            guard current == UInt8(ascii: "\"") else {
                throw failure(current == UInt8(ascii: "}") ? "trailing comma in an object" : "expected a member name (a string)")
            }
            let keyStart = position
            let key = try string()
            guard members[key] == nil else {
                position = keyStart
                throw failure("duplicate key '\(key)'")
            }
            skipWhitespace()
            guard current == UInt8(ascii: ":") else { throw failure("expected ':' after a member name") }
            position += 1
            skipWhitespace()
            members[key] = try value(depth: depth + 1)
            if try closes(with: "}", in: "an object") { return .object(members) }
        }
    }

    private mutating func array(depth: Int) throws(Failure) -> JSONValue {
        position += 1  // [
        var items: [JSONValue] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") {
            position += 1
            return .array(items)
        }
        while true {
            if current == UInt8(ascii: "]") { throw failure("trailing comma in an array") }
            items.append(try value(depth: depth + 1))
            if try closes(with: "]", in: "an array") { return .array(items) }
        }
    }

    /// After an item of an object or array: true at its closing bracket
    /// (taken), false after a comma (taken, with the space after it).
    private mutating func closes(with bracket: Unicode.Scalar, in container: String) throws(Failure) -> Bool {
        skipWhitespace()
        switch current {
        case UInt8(ascii: ","):
            position += 1
            skipWhitespace()
            return false
        case UInt8(ascii: bracket):
            position += 1
            return true
        default:
            throw failure("expected ',' or '\(bracket)' in \(container)")
        }
    }

    private mutating func string() throws(Failure) -> String {
        position += 1  // "
        var scalars = String.UnicodeScalarView()
        var runStart = position
        func flush(_ parser: JSONParser) throws(Failure) {
            guard runStart < parser.position else { return }
            guard let text = String(validating: parser.bytes[runStart..<parser.position], as: UTF8.self) else {
                throw Failure(message: "a string is not valid UTF-8", offset: runStart)
            }
            scalars.append(contentsOf: text.unicodeScalars)
        }
        while true {
            guard let byte = current else { throw failure("unterminated string") }
            switch byte {
            case UInt8(ascii: "\""):
                try flush(self)
                position += 1
                return String(scalars)
            case UInt8(ascii: "\\"):
                try flush(self)
                position += 1
                scalars.append(try escape())
                runStart = position
            case 0x00..<0x20:
                throw failure("a control character in a string must be escaped")
            default:
                position += 1
            }
        }
    }

    /// The character of an escape; `position` is just past the backslash.
    private mutating func escape() throws(Failure) -> Unicode.Scalar {
        guard let byte = current else { throw failure("unterminated string") }
        position += 1
        switch byte {
        case UInt8(ascii: "\""): return "\""
        case UInt8(ascii: "\\"): return "\\"
        case UInt8(ascii: "/"): return "/"
        case UInt8(ascii: "b"): return "\u{08}"
        case UInt8(ascii: "f"): return "\u{0c}"
        case UInt8(ascii: "n"): return "\n"
        case UInt8(ascii: "r"): return "\r"
        case UInt8(ascii: "t"): return "\t"
        case UInt8(ascii: "u"):
            let first = try hex4()
            switch first {
            case 0xd800...0xdbff:
                guard current == UInt8(ascii: "\\"), position + 1 < bytes.count, bytes[position + 1] == UInt8(ascii: "u") else {
                    throw failure("a high surrogate escape must be followed by a low one")
                }
                position += 2
                let second = try hex4()
                guard (0xdc00...0xdfff).contains(second) else { throw failure("a high surrogate escape must be followed by a low one") }
                // invariant: a surrogate pair always encodes a valid scalar
                return Unicode.Scalar(0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00))!
            case 0xdc00...0xdfff:
                throw failure("a low surrogate escape without a high one")
            default:
                return Unicode.Scalar(first)!  // invariant: not a surrogate, below 0x10000
            }
        default:
            position -= 1
            throw failure("invalid escape in a string")
        }
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let byte = current else { throw failure("unterminated \\u escape") }
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw failure("a \\u escape needs four hexadecimal digits")
            }
            value = value << 4 | UInt32(digit)
            position += 1
        }
        return value
    }

    /// An integer when the number's value is one that fits Int64, however it
    /// is written (`1000`, `1e3`, `1000.0`), as JSONDecoder read it; else a
    /// fractional number.
    private mutating func number() throws(Failure) -> JSONValue {
        let start = position
        let negative = current == UInt8(ascii: "-")
        if negative { position += 1 }
        var digits: [UInt8] = []
        guard let first = current, isDigit(first) else { throw failure("a number needs digits") }
        if first == UInt8(ascii: "0") {
            position += 1
            if let next = current, isDigit(next) { throw failure("a number must not have a leading zero") }
            digits.append(0)
        } else {
            while let byte = current, isDigit(byte) { digits.append(byte - UInt8(ascii: "0")); position += 1 }
        }
        var exponent = 0
        if current == UInt8(ascii: ".") {
            position += 1
            guard let byte = current, isDigit(byte) else { throw failure("a number needs digits after '.'") }
            while let byte = current, isDigit(byte) { digits.append(byte - UInt8(ascii: "0")); exponent -= 1; position += 1 }
        }
        if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            position += 1
            var exponentNegative = false
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") {
                exponentNegative = current == UInt8(ascii: "-")
                position += 1
            }
            guard let byte = current, isDigit(byte) else { throw failure("a number needs digits in its exponent") }
            var written = 0
            while let byte = current, isDigit(byte) {
                written = min(written * 10 + Int(byte - UInt8(ascii: "0")), 1_000_000)  // far beyond any Int64 or Double
                position += 1
            }
            exponent += exponentNegative ? -written : written
        }
        if let integer = Self.integer(digits: digits, exponent: exponent, negative: negative) { return .integer(integer) }
        let text = String(decoding: bytes[start..<position], as: UTF8.self)
        guard let double = Double(text), double.isFinite else { throw Failure(message: "a number is out of range", offset: start) }
        return .number(double)
    }

    /// `digits` × 10^`exponent` when that is a whole number that fits Int64.
    private static func integer(digits: [UInt8], exponent: Int, negative: Bool) -> Int64? {
        var digits = digits.drop { $0 == 0 }
        guard !digits.isEmpty else { return 0 }
        var exponent = exponent
        while exponent < 0, digits.last == 0 {
            digits.removeLast()
            exponent += 1
        }
        guard exponent >= 0, digits.count + exponent <= 19 else { return nil }
        var magnitude: UInt64 = 0
        for digit in digits { magnitude = magnitude * 10 + UInt64(digit) }  // at most 19 digits: no overflow
        for _ in 0..<exponent {
            let (product, overflow) = magnitude.multipliedReportingOverflow(by: 10)
            guard !overflow else { return nil }
            magnitude = product
        }
        if negative {
            guard magnitude <= UInt64(Int64.max) + 1 else { return nil }
            return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
        }
        return magnitude <= UInt64(Int64.max) ? Int64(magnitude) : nil
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
}
