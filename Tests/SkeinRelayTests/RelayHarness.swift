import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import SkeinWire
import Testing

@testable import SkeinRelay

/// A real relay on 127.0.0.1 with a kernel-chosen port, running in a `ServiceGroup` for the
/// duration of `body`, then shut down gracefully (which is what SIGTERM does in production).
struct RelayHarness {
    let port: Int
    let service: RelayService

    static func run(
        _ configure: (inout RelayConfiguration) -> Void = { _ in },
        _ body: (RelayHarness) async throws -> Void
    ) async throws {
        var configuration = RelayConfiguration()
        configuration.clientHosts = ["127.0.0.1"]
        configuration.clientPort = 0
        configuration.drainTimeout = .milliseconds(200)
        configure(&configuration)
        let logger = Logger(label: "skein.relay.test") { _ in SwiftLogNoOpLogHandler() }
        let service = RelayService(configuration: configuration, logger: logger)
        let group = ServiceGroup(services: [service], logger: logger)

        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                let port = try await firstPort(of: service)
                try await body(RelayHarness(port: port, service: service))
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    /// The port from `service.listening`, or an error after a few seconds (the stream never
    /// finishes if the relay fails to start).
    private static func firstPort(of service: RelayService) async throws -> Int {
        try await withThrowingTaskGroup(of: Int?.self) { race in
            race.addTask { await service.listening.first { _ in true } }
            race.addTask {
                try await Task.sleep(for: .seconds(10))
                return nil
            }
            defer { race.cancelAll() }
            guard let port = try await race.next()!, port > 0 else {
                throw WireClient.Failure(description: "the relay did not start listening")
            }
            return port
        }
    }

    func connect(_ name: String = "client") async throws -> WireClient {
        try await WireClient.connect(port: port, name: name)
    }

    /// A connection that completed the handshake (the spec's INIT bytes), as a plain client or
    /// a member of `cluster`.
    func handshake(_ name: String = "client", cluster: String = "") async throws -> WireClient {
        let client = try await connect(name)
        try await client.write(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: cluster))
        let reply = try await client.read(hexLike: Spec.relayINIT)
        #expect(reply == Spec.relayINIT)
        return client
    }
}

/// The spec's bytes.
enum Spec {
    static let clientINIT =
        "00 11 69 72 69 73 2d 63 6c 69 65 6e 74 2d 6d 61 67 69 63 0b 76 31 2e 30 2d 64 72 61 66 74 32 00"
    static let memberINIT =
        "00 11 69 72 69 73 2d 63 6c 69 65 6e 74 2d 6d 61 67 69 63 0b 76 31 2e 30 2d 64 72 61 66 74 32 04 65 63 68 6f"
    static let relayINIT =
        "00 10 69 72 69 73 2d 72 65 6c 61 79 2d 6d 61 67 69 63 0b 76 31 2e 30 2d 64 72 61 66 74 32"
}

/// A plain client and a member of `echo` that prove the relay still serves everybody: each
/// `roundTrip` is a full request/reply through the relay.
struct Witness {
    let client: WireClient
    let member: WireClient
    private let counter = Counter()

    static func connect(_ relay: RelayHarness) async throws -> Witness {
        let member = try await relay.handshake("witness member", cluster: "echo")
        let client = try await relay.handshake("witness client")
        return Witness(client: client, member: member)
    }

    /// Request id `n` to echo, answered by the member; `n` counts up so the member's relay-side
    /// id is `n` too (the member gets no other requests).
    func roundTrip(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let n = counter.next()
        try await client.write(.request(id: n, cluster: "echo", body: ByteBuffer(string: "ping \(n)"), timeoutMillis: 5000))
        let request = try await member.readFrame()
        guard case .request(let memberID, let body, _) = request else {
            Issue.record("the witness member got \(request)", sourceLocation: sourceLocation)
            return
        }
        #expect(String(buffer: body) == "ping \(n)", sourceLocation: sourceLocation)
        try await member.write(.reply(id: memberID, outcome: .success(ByteBuffer(string: "pong \(n)"))))
        #expect(try await client.readFrame() == .reply(id: n, outcome: .success(ByteBuffer(string: "pong \(n)"))), sourceLocation: sourceLocation)
    }

    private final class Counter: Sendable {
        private let value = NIOLockedValueBox<UInt64>(0)
        func next() -> UInt64 {
            value.withLockedValue { value in
                defer { value += 1 }
                return value
            }
        }
    }
}

/// The bytes of a CLOSE frame with `reason`.
func closeFrame(_ reason: String) -> ByteBuffer {
    var bytes = ByteBuffer()
    RelayFrame.close(reason: reason).encode(into: &bytes)
    return bytes
}
