// swift-tools-version:6.0
//
// Small, complete programs that use the Skein client binding (`import Skein`).
// A package of its own, so building them never touches the main package's .build:
//
//     swift build --package-path Examples
//
// See README.md beside this file for how to run each against `skein relay --dev`.
import PackageDescription

let package = Package(
    name: "skein-examples",
    platforms: [.macOS(.v14)],
    dependencies: [
        // The Skein package, one directory up. `name:` pins its identity to "skein" whatever
        // the checkout's directory is called (a plain `.package(path:)` takes the directory name).
        .package(name: "skein", path: ".."),
        // For ByteBuffer, the type of message bodies in the binding's API. The version
        // resolves to the one the Skein package uses.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
    ],
    targets: [
        .executableTarget(name: "echo-service", dependencies: skein),
        .executableTarget(name: "echo-client", dependencies: skein),
        .executableTarget(name: "chat", dependencies: skein),
        .executableTarget(name: "send-file", dependencies: skein),
        .executableTarget(name: "receive-file", dependencies: skein),
    ],
    swiftLanguageModes: [.v6]
)

var skein: [Target.Dependency] {
    [
        .product(name: "Skein", package: "skein"),
        .product(name: "NIOCore", package: "swift-nio"),
    ]
}
