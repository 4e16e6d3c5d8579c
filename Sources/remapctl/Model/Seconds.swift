import RemapWire
/// A span of whole seconds as people type it: `90`, `90s`, `10m`, `2h`,
/// `1d`, or several together like `1h30m`. Used for reservation leases
/// (`--ttl`) and for how long a pool queues writes when it is full.
struct Seconds: Equatable, Sendable, CustomStringConvertible {
    let value: Int

    init(_ value: Int) {
        self.value = value
    }

    /// The span in the largest units that give it exactly: `90` is
    /// `1m30s`, `7200` is `2h`, `5400` is `1h30m`.
    var description: String {
        guard value > 0 else { return "\(value)s" }
        var rest = value
        var text = ""
        for (unit, size) in Self.units.reversed() where rest >= size {
            text += "\(rest / size)\(unit)"
            rest %= size
        }
        return text
    }

    /// Why a span given on the command line was refused.
    enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty
        case notADuration(String)
        case notPositive
        case tooLarge

        var description: String {
            switch self {
            case .empty: "a duration is required"
            case .notADuration(let text):
                "'\(text)' is not a duration; use seconds or a number with s, m, h or d (e.g. 90s, 10m, 2h, 1d, 1h30m)"
            case .notPositive: "the duration must be greater than zero"
            case .tooLarge: "the duration is too large"
            }
        }
    }

    private static let units: KeyValuePairs<Character, Int> = ["s": 1, "m": 60, "h": 3600, "d": 86400]

    /// Parses `90`, `90s`, `10m`, `2h`, `1d`, `1h30m`. Units are lower or
    /// upper case; the whole must be more than zero seconds.
    init(parsing text: String) throws(ParseError) {
        let trimmed = text.trimmed
        guard !trimmed.isEmpty else { throw .empty }
        if let plain = Int(trimmed) {
            guard plain > 0 else { throw .notPositive }
            self.init(plain)
            return
        }
        var total = 0
        var digits = ""
        for character in trimmed.lowercased() {
            if character.isASCII, character.isNumber {
                digits.append(character)
                continue
            }
            guard !digits.isEmpty, let size = Self.units.first(where: { $0.key == character })?.value,
                  let number = Int(digits)
            else { throw .notADuration(trimmed) }
            let (product, overflow) = number.multipliedReportingOverflow(by: size)
            let (sum, overflowAgain) = total.addingReportingOverflow(product)
            guard !overflow, !overflowAgain else { throw .tooLarge }
            total = sum
            digits = ""
        }
        // A bare number may only stand alone, not trail a unit ("1h30").
        guard digits.isEmpty else { throw .notADuration(trimmed) }
        guard total > 0 else { throw .notPositive }
        self.init(total)
    }
}
