// swift-tools-version:6.0
import PackageDescription

// No target carries unsafe flags: SwiftPM refuses them in a versioned dependency, and `Skein` is
// one. The hot path still pays no run-time exclusivity checks: the stored properties of the
// shells' classes (each confined to one event loop, or behind a lock) are declared
// `@exclusivity(unchecked)` where they are declared, which SwiftPM allows. Everything else keeps
// Swift's checks in every configuration (Docs/architecture.md, "Exclusivity").

let package = Package(
    name: "skein",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "skein", targets: ["SkeinCLI"]),
        .library(name: "Skein", targets: ["Skein"]),
        .library(name: "SkeinRelay", targets: ["SkeinRelay"]),
        .library(name: "SkeinWire", targets: ["SkeinWire"]),
        .library(name: "SkeinCrypto", targets: ["SkeinCrypto"]),
        .library(name: "SkeinMembership", targets: ["SkeinMembership"]),
        .library(name: "SkeinRouting", targets: ["SkeinRouting"]),
        .library(name: "SkeinFederation", targets: ["SkeinFederation"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        // The binding propagates trace context in skein/2 headers (Docs/skein-2.md).
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.0"),
        // `swift package generate-documentation --target Skein`: the binding's DocC catalog
        // (Sources/Skein/Skein.docc). A plugin only; nothing links it.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        // libsodium, from Debian's libsodium-dev: every cryptographic primitive Skein uses.
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        // OpenSSL's libcrypto, from Debian's libssl-dev: AES-256-GCM for large peer records only,
        // where it runs about twice as fast as libsodium 1.0.18's (Docs/peer-protocol.md §2.5).
        .systemLibrary(
            name: "CLibCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        // Federation's vocabulary: network names, `name@network`, exports, the config file. Pure.
        .target(name: "SkeinFederation"),
        // The relay protocol's codecs: pure, no I/O.
        .target(
            name: "SkeinWire",
            dependencies: [
                "SkeinFederation",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // Keys, keyrings, the peer handshake, sealed records and datagrams: libsodium, no I/O.
        // NIOCore for ByteBuffer (records) and NIODeadline (handshake deadlines) only.
        .target(
            name: "SkeinCrypto",
            dependencies: [
                "CSodium", "CLibCrypto", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        // SWIM + Lifeguard membership: a pure core (no I/O, no clock, no randomness of its own).
        // NIOCore only for NIODeadline/TimeAmount.
        .target(
            name: "SkeinMembership",
            dependencies: [
                "SkeinFederation",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),
        // Which remote relays serve which clusters and topics, and where a request goes. Pure.
        .target(name: "SkeinRouting", dependencies: ["SkeinMembership", "SkeinFederation"]),
        // Many membership cores, or many whole relays (`RelayLoop`s with clients), in one process
        // on virtual time: network faults, scenarios, metrics, invariants.
        .target(
            name: "SkeinSimulator",
            dependencies: [
                "SkeinMembership",
                "SkeinRelay",
                "SkeinWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "HeapModule", package: "swift-collections"),
            ]
        ),
        // The relay daemon: the pure relay core plus its SwiftNIO shell.
        .target(
            name: "SkeinRelay",
            dependencies: [
                "SkeinFederation",
                "SkeinWire",
                "SkeinCrypto",
                "SkeinMembership",
                "SkeinRouting",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        // The async/await client binding.
        .target(
            name: "Skein",
            dependencies: [
                "SkeinWire",
                "SkeinFederation",
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The command-line tool: thin glue over the libraries.
        .executableTarget(
            name: "SkeinCLI",
            dependencies: [
                "Skein",
                "SkeinRelay",
                "SkeinCrypto",
                "SkeinSimulator",
                "SkeinFederation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // What every test target shares: `eventually`, `waitUntil`, `testNode`. Not a product.
        .target(name: "SkeinTestSupport", dependencies: ["SkeinMembership"], path: "Tests/SkeinTestSupport"),
        .testTarget(name: "SkeinFederationTests", dependencies: ["SkeinFederation"]),
        .testTarget(
            name: "SkeinWireTests",
            dependencies: ["SkeinWire", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "SkeinMembershipTests",
            dependencies: ["SkeinTestSupport", "SkeinMembership", "SkeinFederation", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(name: "SkeinRoutingTests", dependencies: ["SkeinTestSupport", "SkeinRouting", "SkeinMembership"]),
        .testTarget(
            name: "SkeinSimulatorTests",
            dependencies: ["SkeinTestSupport", "SkeinSimulator", "SkeinMembership", "SkeinRelay", "SkeinWire", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "SkeinRelayTests",
            dependencies: [
                "SkeinTestSupport",
                "SkeinRelay",
                "SkeinFederation",
                "SkeinRouting",
                "SkeinMembership",
                "SkeinCrypto",
                "SkeinWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "SkeinTests",
            dependencies: [
                "SkeinTestSupport",
                "Skein",
                "SkeinRelay",
                "SkeinWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "SkeinCryptoTests",
            dependencies: ["SkeinCrypto", "CSodium", .product(name: "NIOCore", package: "swift-nio")]
        ),
        // Spawns the built `skein` binary; depends on it being built (`swift build --build-tests`).
        .testTarget(
            name: "SkeinCLITests",
            dependencies: [
                "SkeinTestSupport",
                "Skein",
                "SkeinCrypto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// The libFuzzer target over SkeinCrypto's openers: only in the graph when Fuzz/run asks for it,
// so the product never sees it (Docs/peer-protocol.md §6).
if Context.environment["SKEIN_FUZZ"] != nil {
    package.targets.append(
        .executableTarget(
            name: "FuzzOpeners",
            dependencies: ["SkeinCrypto", "SkeinWire", "SkeinMembership", .product(name: "NIOCore", package: "swift-nio")],
            path: "Fuzz/FuzzOpeners"
        )
    )
}
