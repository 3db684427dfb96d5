import Foundation
import NIOCore
import Skein
import Testing

@Suite("Relay endpoints", .timeLimit(.minutes(1)))
struct RelayEndpointTests {
    @Test(arguments: [
        ("55555", RelayEndpoint.tcp(host: "127.0.0.1", port: 55555)),
        ("127.0.0.1:1234", .tcp(host: "127.0.0.1", port: 1234)),
        ("localhost:0", .tcp(host: "localhost", port: 0)),
        ("[::1]:55555", .tcp(host: "::1", port: 55555)),
    ])
    func parses(text: String, expected: RelayEndpoint) {
        #expect(RelayEndpoint(text) == expected)
    }

    @Test(arguments: ["", ":80", "host:", "host:65536", "host:-1", "::1", "fe80::1:80", "[::1]", "[]:80", "x:y"])
    func rejects(text: String) {
        #expect(RelayEndpoint(text) == nil, "\(text.debugDescription) is not an endpoint")
    }

    @Test func descriptionRoundTrips() {
        for endpoint in [RelayEndpoint.tcp(host: "127.0.0.1", port: 1), .tcp(host: "::1", port: 55555), .tcp(host: "localhost", port: 80)] {
            #expect(RelayEndpoint(endpoint.description) == endpoint)
        }
    }

    @Test func unixSocket() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("skein-test-\(UInt32.random(in: 0...UInt32.max)).sock").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try await TestRelay.run({ $0.clientSocket = path }) { relay in
            let member = try await Skein.serve(cluster: "unix", to: .unixSocket(path: path), request: { $0.body })
            let client = try await Skein.connect(to: .unixSocket(path: path))
            #expect(try await client.request(cluster: "unix", "over a socket file", timeout: .seconds(5)).text == "over a socket file")
            try await client.close()
            try await member.close()
        }
    }
}
