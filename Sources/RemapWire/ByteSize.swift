/// A size in bytes, as people type it on command lines and read it in
/// tables and logs: one grammar for remapd's flags and remapctl's options.
///
/// Units are binary (1024-based) whatever their spelling: `K`, `KB` and `KiB`
/// all mean 1024 bytes, because a storage pool is carved in powers of two and
/// a decimal kilobyte would never line up with a chunk.
public struct ByteSize: Equatable, Sendable, CustomStringConvertible {
    /// The exact number of bytes.
    public let bytes: Int

    public init(bytes: Int) {
        self.bytes = bytes
    }

    /// The size in the short human form, e.g. `4.0 GiB`, `64 KiB`, `512 B`.
    public var description: String { ByteSize.format(bytes) }
}

// MARK: - Parsing

extension ByteSize {
    /// Why a size was refused.
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty
        case notANumber
        case unknownUnit(String)
        case notPositive
        case tooLarge
        case notWholeBytes

        public var description: String {
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
    /// number of bytes. White space around the number and the unit is
    /// ignored. Negative numbers, sizes above `Int.max` and, unless
    /// `allowingZero` (for offsets), zero are refused.
    public init(parsing text: String, allowingZero: Bool = false) throws(ParseError) {
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
    /// How a formatted size spells its fraction.
    public enum FormatStyle: Sendable {
        /// As `ls -h` does, so that table columns line up: one decimal below
        /// ten (`4.0 GiB`), whole numbers from ten up (`64 KiB`).
        case aligned
        /// For prose and logs: one decimal where it is not zero (`4 GiB`,
        /// `1.5 KiB`, `12.3 GiB`).
        case compact
    }

    private static let unitNames = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]

    /// `bytes` with binary units, in the largest unit it reaches; below one
    /// KiB plain bytes (`512 B`). A value that rounds up to 1024 of a unit
    /// is written in the next one.
    public static func format<Count: BinaryInteger>(_ bytes: Count, style: FormatStyle = .aligned) -> String {
        let magnitude = UInt64(clamping: bytes.magnitude)
        let sign = bytes < 0 ? "-" : ""
        guard magnitude >= 1024 else { return "\(sign)\(magnitude) B" }

        var unit = 0
        var value = Double(magnitude)
        while value >= 1024 && unit < unitNames.count - 1 {
            value /= 1024
            unit += 1
        }
        let tenths = Int((value * 10).rounded())
        let hasNext = unit < unitNames.count - 1
        switch style {
        case .aligned:
            if tenths < 100 { return "\(sign)\(tenths / 10).\(tenths % 10) \(unitNames[unit])" }
            let whole = Int(value.rounded())
            if whole >= 1024 && hasNext { return "\(sign)1.0 \(unitNames[unit + 1])" }
            return "\(sign)\(whole) \(unitNames[unit])"
        case .compact:
            if tenths >= 10240 && hasNext { return "\(sign)1 \(unitNames[unit + 1])" }
            let fraction = tenths % 10 == 0 ? "" : ".\(tenths % 10)"
            return "\(sign)\(tenths / 10)\(fraction) \(unitNames[unit])"
        }
    }
}
