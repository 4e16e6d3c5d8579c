/// A latency histogram with fixed buckets (seconds), Prometheus-style:
/// `counts[i]` counts observations `<= bounds[i]`, not cumulated.
public struct Histogram: Sendable, Equatable {
    public static let bounds: [Double] = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
    ]
    /// One per bound, plus one for +Inf.
    public private(set) var counts = [UInt64](repeating: 0, count: Histogram.bounds.count + 1)
    public private(set) var sum: Double = 0
    public private(set) var count: UInt64 = 0

    public init() {}

    public mutating func merge(_ other: Histogram) {
        for index in counts.indices { counts[index] += other.counts[index] }
        sum += other.sum
        count += other.count
    }

    public mutating func observe(_ seconds: Double) {
        var index = 0
        while index < Self.bounds.count && seconds > Self.bounds[index] { index += 1 }
        counts[index] += 1
        sum += seconds
        count += 1
    }
}

/// What one kind of NBD command has done since start.
public struct CommandStatistics: Sendable, Equatable {
    public var requests: UInt64 = 0
    public var bytes: UInt64 = 0
    /// By error name (EINVAL, EIO, ENOSPC, ...).
    public var errors: [String: UInt64] = [:]
    public var latency = Histogram()

    public init() {}
}

/// How long the engine thread ran one kind of command at a time: a
/// control-plane call, what its commits ran when they came back, a tick.
/// While it runs, no NBD request of any pool is served.
public struct EngineCommandStatistics: Sendable, Equatable {
    /// Wall-clock time of each run: what NBD clients wait.
    public var duration = Histogram()
    /// The longest run since start.
    public var maxSeconds: Double = 0
    /// The most CPU time the engine thread spent in one run: the command's
    /// own work, without the time the machine gave to other threads. Nil
    /// for the periodic tick (not measured: it runs between every batch of
    /// I/O, and the thread's CPU clock costs a system call).
    public var maxCPUSeconds: Double?

    public init() {}

    public mutating func observe(_ seconds: Double, cpuSeconds: Double?) {
        duration.observe(seconds)
        maxSeconds = max(maxSeconds, seconds)
        if let cpuSeconds { maxCPUSeconds = max(maxCPUSeconds ?? 0, cpuSeconds) }
    }

    /// Both runs counted as one kind.
    public mutating func merge(_ other: EngineCommandStatistics) {
        duration.merge(other.duration)
        maxSeconds = max(maxSeconds, other.maxSeconds)
        if let cpu = other.maxCPUSeconds { maxCPUSeconds = max(maxCPUSeconds ?? 0, cpu) }
    }
}

/// The data path's counters, copied out of the engine for /metrics.
public struct DataPathStatistics: Sendable, Equatable {
    /// By command name (read, write, flush, ...).
    public var commands: [String: CommandStatistics] = [:]
    public var connections = 0
    /// Metadata commits that failed since start (their changes are retried).
    public var metadataCommitFailures: UInt64 = 0
    /// The engine thread's time per command, by command name (createPool, checkPool, commit, tick...).
    public var engineCommands: [String: EngineCommandStatistics] = [:]

    public init() {}
}
