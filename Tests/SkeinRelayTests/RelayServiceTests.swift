import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkeinWire
import Testing

@testable import SkeinRelay

/// `RelayService` as a swift-service-lifecycle service: graceful shutdown drains in-flight
/// requests before closing connections; cancellation also ends it.
@Suite("RelayService lifecycle")
struct RelayServiceTests {
    static func makeService(drainTimeout: TimeAmount = .seconds(5)) -> RelayService {
        var configuration = RelayConfiguration()
        configuration.clientHosts = ["127.0.0.1"]
        configuration.clientPort = 0
        configuration.drainTimeout = drainTimeout
        return RelayService(configuration: configuration, logger: Logger(label: "skein.relay.test") { _ in SwiftLogNoOpLogHandler() })
    }

    static func port(of service: RelayService) async throws -> Int {
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

    static func handshake(_ port: Int, cluster: String = "") async throws -> WireClient {
        let client = try await WireClient.connect(port: port)
        try await client.write(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: cluster))
        #expect(try await client.read(hexLike: Spec.relayINIT) == Spec.relayINIT)
        return client
    }

    @Test("graceful shutdown lets an in-flight request finish, then closes with a reason")
    func drain() async throws {
        // A drain timeout a loaded machine cannot reach before the member answers: the drain
        // ends when the request does, so it costs nothing.
        let service = Self.makeService(drainTimeout: .seconds(60))
        let logger = Logger(label: "skein.relay.test") { _ in SwiftLogNoOpLogHandler() }
        let group = ServiceGroup(services: [service], logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let port = try await Self.port(of: service)
            let member = try await Self.handshake(port, cluster: "echo")
            let client = try await Self.handshake(port)
            try await client.write("04 00 04 65 63 68 6f 05 68 65 6c 6c 6f 88 27")  // 5000 ms
            #expect(try await member.read(hexLike: "04 00 05 68 65 6c 6c 6f 88 27") == "04 00 05 68 65 6c 6c 6f 88 27")

            await group.triggerGracefulShutdown()
            // Stops accepting: new connections are refused once the listener is closed.
            let deadline = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < deadline, let probe = try? await WireClient.connect(port: port) {
                await probe.close()
                try await Task.sleep(for: .milliseconds(5))
            }
            #expect(ContinuousClock.now < deadline, "the relay kept accepting connections while shutting down")

            // The request still in flight is answered before the connections close.
            try await member.write("05 00 01 02 6f 6b")
            #expect(try await client.readToEnd() == ByteBuffer(hex: "05 00 00 01 02 6f 6b") + closeFrame("relay shutting down"))
            #expect(try await member.readToEnd() == closeFrame("relay shutting down"))
            try await tasks.waitForAll()
        }
    }

    @Test("cancelling run() also shuts the relay down")
    func cancellation() async throws {
        let service = Self.makeService(drainTimeout: .milliseconds(100))
        let run = Task { try await service.run() }
        let port = try await Self.port(of: service)
        let client = try await Self.handshake(port)
        run.cancel()
        #expect(try await client.readToEnd() == closeFrame("relay shutting down"))
        try await run.value
    }
}

extension ByteBuffer {
    static func + (a: ByteBuffer, b: ByteBuffer) -> ByteBuffer {
        var sum = a
        sum.writeImmutableBuffer(b)
        return sum
    }
}

@Suite("Relay listeners")
struct RelayListenerTests {
    @Test("with --client-port 0 every loopback address gets the same port")
    func samePortOnEveryAddress() async throws {
        var configuration = RelayConfiguration()
        configuration.clientPort = 0
        configuration.clientHosts = ["127.0.0.1", "127.0.0.2"]
        let server = ClientServer(configuration: configuration, eventLoop: MultiThreadedEventLoopGroup.singleton.next(), logger: Logger(label: "test"))
        try await server.start()
        let ports = try await server.eventLoop.submit { server.listenerPorts }.get()
        await server.stopListening()
        #expect(ports.count == 2)
        #expect(Set(ports).count == 1)
    }
}
