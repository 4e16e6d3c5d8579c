/// A size in bytes, as people type it on the command line and read it in
/// tables.
///
/// Units are binary (1024-based) whatever their spelling: `K`, `KB` and `KiB`
/// all mean 1024 bytes, because a storage pool is carved in powers of two and
/// a decimal kilobyte would never line up with a chunk.
struct ByteSize: Equatable, Sendable, CustomStringConvertible {
    /// The exact number of bytes.
    let bytes: Int

    init(bytes: Int) {
        self.bytes = bytes
    }

    /// The size in the short human form, e.g. `4.0 GiB`, `64 KiB`, `512 B`.
    var description: String { ByteSize.format(bytes) }
}

// MARK: - Parsing

extension ByteSize {
    /// Why a size given on the command line was refused.
    enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty
        case notANumber
        case unknownUnit(String)
        case notPositive
        case tooLarge
        case notWholeBytes

        var description: String {
            switch self {
            case .empty: "a size is required"
            case .notANumber: "not a size; use a number of bytes or a number with K, M, G, T or P (e.g. 1G, 512M)"
            case .unknownUnit(let unit): "unknown unit '\(unit)'; use K, M, G, T or P (or KiB, MiB, GiB, TiB, PiB)"
            case .notPositive: "the size must be greater than zero"
            case .tooLarge: "the size is too large"
            case .notWholeBytes: "the size is not a whole number of bytes"
            }
        }
    }

    /// Parses sizes such as `1073741824`, `1G`, `1 GiB`, `512m`, `1.5T`.
    ///
    /// The number may carry a decimal fraction as long as the result is a whole
    /// number of bytes. Negative numbers, sizes above `Int.max` and, unless
    /// `allowingZero` (for offsets), zero are refused.
    init(parsing text: String, allowingZero: Bool = false) throws(ParseError) {
        let trimmed = text.trimmed
        guard !trimmed.isEmpty else { throw .empty }
        if trimmed.first == "-" { throw .notPositive }

        let numberEnd = trimmed.firstIndex { !($0.isASCII && ($0.isNumber || $0 == ".")) } ?? trimmed.endIndex
        let number = trimmed[..<numberEnd]
        let unit = trimmed[numberEnd...].trimmed.lowercased()

        let parts = number.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let wholeDigits = parts.first ?? ""
        let fractionDigits = parts.count > 1 ? parts[1] : ""
        guard !(wholeDigits.isEmpty && fractionDigits.isEmpty),
              !fractionDigits.contains(".")
        else { throw .notANumber }

        guard let multiplier = ByteSize.multipliers[unit] else {
            if unit.contains(where: \.isNumber) || unit.isEmpty { throw .notANumber }
            throw .unknownUnit(String(trimmed[numberEnd...].trimmed))
        }

        // Int128 leaves room for the largest Int times the largest unit, so
        // only the final result needs a range check.
        var scaled = try Self.decimal(wholeDigits).multipliedChecked(by: multiplier)
        if !fractionDigits.isEmpty {
            let numerator = try Self.decimal(fractionDigits).multipliedChecked(by: multiplier)
            var denominator: Int128 = 1
            for _ in fractionDigits { denominator = try denominator.multipliedChecked(by: 10) }
            guard numerator % denominator == 0 else { throw .notWholeBytes }
            scaled = try scaled.addingChecked(numerator / denominator)
        }
        guard scaled > 0 || (allowingZero && scaled == 0) else { throw .notPositive }
        guard scaled <= Int128(Int.max) else { throw .tooLarge }
        self.init(bytes: Int(scaled))
    }

    private static let multipliers: [String: Int128] = {
        var table: [String: Int128] = ["": 1, "b": 1]
        for (power, letter) in ["k", "m", "g", "t", "p"].enumerated() {
            let value = Int128(1) << (10 * (power + 1))
            table[letter] = value
            table[letter + "b"] = value
            table[letter + "ib"] = value
        }
        return table
    }()

    private static func decimal(_ digits: Substring) throws(ParseError) -> Int128 {
        var value: Int128 = 0
        for digit in digits {
            guard let digitValue = digit.wholeNumberValue else { throw .notANumber }
            value = try value.multipliedChecked(by: 10).addingChecked(Int128(digitValue))
        }
        return value
    }
}

extension Int128 {
    fileprivate func multipliedChecked(by other: Int128) throws(ByteSize.ParseError) -> Int128 {
        let (result, overflow) = multipliedReportingOverflow(by: other)
        if overflow { throw .tooLarge }
        return result
    }

    fileprivate func addingChecked(_ other: Int128) throws(ByteSize.ParseError) -> Int128 {
        let (result, overflow) = addingReportingOverflow(other)
        if overflow { throw .tooLarge }
        return result
    }
}

// MARK: - Formatting

extension ByteSize {
    private static let unitNames = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]

    /// Formats a byte count the way `ls -h` does, with binary units: one
    /// decimal below ten (`4.0 GiB`), whole numbers from ten up (`64 KiB`),
    /// and plain bytes below one KiB (`512 B`).
    static func format(_ bytes: Int) -> String {
        let magnitude = bytes.magnitude
        let sign = bytes < 0 ? "-" : ""
        guard magnitude >= 1024 else { return "\(sign)\(magnitude) B" }

        var unit = 0
        var value = Double(magnitude)
        while value >= 1024 && unit < unitNames.count - 1 {
            value /= 1024
            unit += 1
        }
        let tenths = (value * 10).rounded()
        if tenths < 100 {
            return "\(sign)\(Int(tenths) / 10).\(Int(tenths) % 10) \(unitNames[unit])"
        }
        let whole = value.rounded()
        if whole >= 1024 && unit < unitNames.count - 1 {
            return "\(sign)1.0 \(unitNames[unit + 1])"
        }
        return "\(sign)\(Int(whole)) \(unitNames[unit])"
    }

    /// The share `part` is of `whole` as a percentage with one decimal, e.g.
    /// `12.5%`, or `-` when `whole` is zero.
    static func percentage(_ part: Int, of whole: Int) -> String {
        guard whole > 0 else { return "-" }
        let tenths = Int((Double(part) / Double(whole) * 1000).rounded())
        return "\(tenths / 10).\(tenths % 10)%"
    }
}
