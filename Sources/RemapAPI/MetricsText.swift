import RemapCore

/// The Prometheus text exposition format (version 0.0.4) of remap's numbers.
enum MetricsText {
    static func render(pools: [PoolInfo], volumes: [VolumeInfo], dataPath: DataPathStatistics,
                       http: HTTPStatistics.Snapshot) -> String {
        var out = Output()
        out.family("remap_pool_capacity_bytes", "gauge", "Bytes a pool's suppliers provide, in whole chunks.")
        for pool in pools { out.sample("remap_pool_capacity_bytes", [("pool", pool.name)], pool.capacityBytes) }
        out.family("remap_pool_allocated_bytes", "gauge", "Bytes of a pool mapped by volumes.")
        for pool in pools { out.sample("remap_pool_allocated_bytes", [("pool", pool.name)], pool.allocatedBytes) }
        out.family("remap_pool_reserved_bytes", "gauge", "The unused part of a pool's live reservations.")
        for pool in pools { out.sample("remap_pool_reserved_bytes", [("pool", pool.name)], pool.reservedBytes) }
        out.family("remap_pool_free_bytes", "gauge", "Bytes of a pool free for new writes.")
        for pool in pools { out.sample("remap_pool_free_bytes", [("pool", pool.name)], pool.freeBytes) }
        out.family("remap_pool_provisioned_bytes", "gauge", "Sum of the sizes of a pool's volumes.")
        for pool in pools { out.sample("remap_pool_provisioned_bytes", [("pool", pool.name)], pool.provisionedBytes) }
        out.family("remap_pool_state", "gauge", "1 for the state a pool is in (online, degraded, offline), 0 for the others.")
        for pool in pools {
            for state in PoolState.allCases {
                out.sample("remap_pool_state", [("pool", pool.name), ("state", state.rawValue)], pool.state == state ? 1 : 0)
            }
        }
        out.family("remap_metadata_commit_failures_total", "counter", "Metadata commits that failed (their changes were kept and retried).")
        out.sample("remap_metadata_commit_failures_total", [], dataPath.metadataCommitFailures)

        out.family("remap_volume_size_bytes", "gauge", "A volume's size.")
        for volume in volumes {
            out.sample("remap_volume_size_bytes", [("volume", volume.name), ("pool", volume.pool)], volume.sizeBytes)
        }
        out.family("remap_volume_allocated_bytes", "gauge", "Bytes of a volume holding data.")
        for volume in volumes {
            out.sample("remap_volume_allocated_bytes", [("volume", volume.name), ("pool", volume.pool)], volume.allocatedBytes)
        }
        out.family("remap_volume_reserved_bytes", "gauge", "The unused part of a volume's reservations.")
        for volume in volumes {
            out.sample("remap_volume_reserved_bytes", [("volume", volume.name), ("pool", volume.pool)], volume.reservedBytes)
        }
        out.family("remap_volume_guaranteed_writable_bytes", "gauge", "Bytes of a volume writable without free space.")
        for volume in volumes {
            out.sample("remap_volume_guaranteed_writable_bytes", [("volume", volume.name), ("pool", volume.pool)],
                       volume.guaranteedWritableBytes)
        }

        let commands = dataPath.commands.sorted { $0.key < $1.key }
        out.family("remap_nbd_connections", "gauge", "Open NBD connections.")
        out.sample("remap_nbd_connections", [], UInt64(dataPath.connections))
        out.family("remap_nbd_requests_total", "counter", "NBD requests answered, by command.")
        for (command, entry) in commands { out.sample("remap_nbd_requests_total", [("command", command)], entry.requests) }
        out.family("remap_nbd_bytes_total", "counter", "Payload bytes read or written over NBD, by command.")
        for (command, entry) in commands { out.sample("remap_nbd_bytes_total", [("command", command)], entry.bytes) }
        out.family("remap_nbd_errors_total", "counter", "NBD requests answered with an error, by command and error.")
        for (command, entry) in commands {
            for (error, count) in entry.errors.sorted(by: { $0.key < $1.key }) {
                out.sample("remap_nbd_errors_total", [("command", command), ("error", error)], count)
            }
        }
        out.family("remap_nbd_request_duration_seconds", "histogram", "Time from an NBD request's arrival to its reply.")
        for (command, entry) in commands {
            out.histogram("remap_nbd_request_duration_seconds", [("command", command)], entry.latency)
        }

        let engineCommands = dataPath.engineCommands.sorted { $0.key < $1.key }
        out.family("remap_engine_command_seconds", "histogram",
                   "Time the engine thread ran one command (no NBD request is served meanwhile), by command.")
        for (command, entry) in engineCommands {
            out.histogram("remap_engine_command_seconds", [("command", command)], entry.duration)
        }
        out.family("remap_engine_command_seconds_max", "gauge", "The longest the engine thread ran one command since start, by command.")
        for (command, entry) in engineCommands {
            out.sample("remap_engine_command_seconds_max", [("command", command)], seconds: entry.maxSeconds)
        }
        out.family("remap_engine_command_cpu_seconds_max", "gauge",
                   "The most CPU time the engine thread spent in one run of a command since start, by command (not the tick).")
        for (command, entry) in engineCommands {
            guard let cpu = entry.maxCPUSeconds else { continue }
            out.sample("remap_engine_command_cpu_seconds_max", [("command", command)], seconds: cpu)
        }

        out.family("remap_http_requests_total", "counter", "REST requests answered, by route, method and status.")
        for (key, count) in http.requests.sorted(by: { $0.key < $1.key }) {
            out.sample("remap_http_requests_total",
                       [("route", key.route), ("method", key.method), ("status", String(key.status))], count)
        }
        out.family("remap_http_request_duration_seconds", "histogram", "Time to answer a REST request, by route.")
        for (route, histogram) in http.latency.sorted(by: { $0.key < $1.key }) {
            out.histogram("remap_http_request_duration_seconds", [("route", route)], histogram)
        }
        return out.text
    }

    private struct Output {
        var text = ""

        mutating func family(_ name: String, _ type: String, _ help: String) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }

        mutating func sample(_ name: String, _ labels: [(String, String)], _ value: UInt64) {
            text += "\(name)\(Self.format(labels)) \(value)\n"
        }

        mutating func sample(_ name: String, _ labels: [(String, String)], seconds value: Double) {
            text += "\(name)\(Self.format(labels)) \(value)\n"
        }

        mutating func histogram(_ name: String, _ labels: [(String, String)], _ histogram: Histogram) {
            var cumulative: UInt64 = 0
            for (index, bound) in Histogram.bounds.enumerated() {
                cumulative += histogram.counts[index]
                text += "\(name)_bucket\(Self.format(labels + [("le", String(bound))])) \(cumulative)\n"
            }
            text += "\(name)_bucket\(Self.format(labels + [("le", "+Inf")])) \(histogram.count)\n"
            text += "\(name)_sum\(Self.format(labels)) \(histogram.sum)\n"
            text += "\(name)_count\(Self.format(labels)) \(histogram.count)\n"
        }

        static func format(_ labels: [(String, String)]) -> String {
            guard !labels.isEmpty else { return "" }
            return "{" + labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
        }

        static func escape(_ value: String) -> String {
            var escaped = ""
            for character in value {
                switch character {
                case "\\": escaped += "\\\\"
                case "\"": escaped += "\\\""
                case "\n": escaped += "\\n"
                default: escaped.append(character)
                }
            }
            return escaped
        }
    }
}
