// swift-tools-version:6.0
// Skein's benchmarks: a load generator (`skein-bench`) that drives a relay through the public
// `Skein` binding. A separate package so that benchmark-only dependencies (HdrHistogram) never
// reach the product's Package.swift. Build: swift build -c release --package-path Benchmarks
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, so the root package's identity is whatever
// the checkout is called (main, skein, ...): derive it rather than hard-code it.
let rootIdentity = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "skein-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
    ],
    targets: [
        .executableTarget(
            name: "skein-bench",
            dependencies: [
                .product(name: "Skein", package: rootIdentity),
                .product(name: "SkeinRelay", package: rootIdentity),
                .product(name: "SkeinCrypto", package: rootIdentity),
                .product(name: "SkeinWire", package: rootIdentity),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        )
    ],
    swiftLanguageModes: [.v6]
)
