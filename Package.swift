// swift-tools-version:6.1
import PackageDescription

// liburing.h pulls in <sys/socket.h> etc.; without _GNU_SOURCE in every
// module glibc's fd_set is defined twice and the modules clash.
let gnuSource: [CSetting] = [.define("_GNU_SOURCE")]
let swiftGnuSource: [SwiftSetting] = [
    .unsafeFlags(["-Xcc", "-D_GNU_SOURCE"]),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]
let upcoming: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "remap",
    products: [
        .executable(name: "remapd", targets: ["remapd"]),
        .executable(name: "remapctl", targets: ["remapctl"]),
        .executable(name: "remap-fuzz", targets: ["remap-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // System libraries (Debian -dev packages) and the thin C shims Swift needs.
        .target(
            name: "CMicroHTTPD",
            cSettings: gnuSource,
            linkerSettings: [.linkedLibrary("microhttpd")]
        ),
        .target(
            name: "CURing",
            cSettings: gnuSource,
            linkerSettings: [.linkedLibrary("uring")]
        ),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd"),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3"),
        .systemLibrary(name: "CGnuTLS", pkgConfig: "gnutls"),

        // The wire contract remapd and remapctl share: JSON, problems, sizes
        // and the API's response types. No Foundation, no dependencies.
        .target(name: "RemapWire", swiftSettings: upcoming),
        .target(name: "RemapCore", dependencies: ["RemapWire"], swiftSettings: upcoming),
        // remapd's log: swift-log's Logger with a handler for stderr and the journal.
        .target(name: "RemapLog", dependencies: ["RemapCore", .product(name: "Logging", package: "swift-log")], swiftSettings: upcoming),
        .target(name: "RemapStore", dependencies: ["RemapCore", "CSQLite"], swiftSettings: swiftGnuSource),
        .target(name: "RemapEngine", dependencies: ["RemapCore", "RemapLog", "RemapStore", "CURing", "CGnuTLS"], cSettings: gnuSource, swiftSettings: swiftGnuSource),
        .target(name: "RemapAPI", dependencies: ["RemapCore", "RemapLog", "RemapWire", "CMicroHTTPD"], cSettings: gnuSource, swiftSettings: swiftGnuSource),
        .executableTarget(
            name: "remapd",
            dependencies: [
                "RemapCore", "RemapLog", "RemapStore", "RemapEngine", "RemapAPI", "CSystemd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftGnuSource
        ),
        .executableTarget(
            name: "remapctl",
            dependencies: ["RemapWire", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: upcoming
        ),

        // Fuzzing: the targets (RemapFuzz) and their driver, a libFuzzer
        // binary under `make fuzz` and a replay tool otherwise (see README).
        .target(name: "RemapFuzz", dependencies: ["RemapCore", "RemapStore", "RemapEngine", "RemapAPI"], swiftSettings: swiftGnuSource),
        .executableTarget(name: "remap-fuzz", dependencies: ["RemapFuzz"], swiftSettings: swiftGnuSource),

        .testTarget(name: "RemapCoreTests", dependencies: ["RemapCore"], swiftSettings: upcoming),
        .testTarget(name: "RemapLogTests", dependencies: ["RemapLog", .product(name: "Logging", package: "swift-log")], swiftSettings: upcoming),
        .testTarget(name: "RemapEngineTests", dependencies: ["RemapEngine", "RemapCore"], swiftSettings: swiftGnuSource),
        .testTarget(name: "RemapAPITests", dependencies: ["RemapAPI", "RemapCore", "RemapWire"], swiftSettings: swiftGnuSource),
        .testTarget(name: "RemapWireTests", dependencies: ["RemapWire"], swiftSettings: upcoming),
        // remapctl is an executable; SwiftPM lets tests import it all the same.
        .testTarget(name: "RemapctlTests", dependencies: ["remapctl", "RemapWire"], swiftSettings: upcoming),
        .testTarget(name: "RemapFuzzTests", dependencies: ["RemapFuzz"], swiftSettings: swiftGnuSource),
    ]
)
