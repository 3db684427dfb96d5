#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Skein
import SkeinWire
import Testing

/// A TCP server on 127.0.0.1 that plays a script instead of the relay protocol: after it has
/// received `after` bytes in total, it writes `send` and, if told to, closes.
struct FakeRelay {
    struct Step: Sendable {
        var after: Int
        var send: [UInt8]
        var close = false
    }

    /// Bytes of the client's INIT for a plain client (the spec's example).
    static let clientInitSize = 32
    /// Bytes of a plain client's INIT asking for skein/1.
    static let skein1InitSize = 28
    /// These relays speak v1.0-draft2 only, as an Iris node does: the binding is told so.
    static let iris: ConnectionOptions = {
        var options = ConnectionOptions()
        options.protocolVersion = .irisDraft2
        return options
    }()

    /// Every connection plays `steps`.
    static func run(_ steps: [Step], _ body: (RelayEndpoint) async throws -> Void) async throws {
        try await run(connections: [steps], body)
    }

    /// The n-th connection plays `connections[n]` (the last script for any later one).
    static func run(connections scripts: [[Step]], _ body: (RelayEndpoint) async throws -> Void) async throws {
        let accepted = NIOLockedValueBox(0)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                let index = accepted.withLockedValue { n in
                    defer { n += 1 }
                    return min(n, scripts.count - 1)
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Script(steps: scripts[index]))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }
        try await body(.tcp(host: "127.0.0.1", port: server.localAddress!.port!))
    }

    static func relayFrame(_ frame: RelayFrame) -> [UInt8] {
        var buffer = ByteBuffer()
        frame.encode(into: &buffer)
        return Array(buffer.readableBytesView)
    }

    static let relayInit = relayFrame(.initialize(magic: "iris-relay-magic", version: "v1.0-draft2"))

    private final class Script: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var steps: [Step]
        var received = 0

        init(steps: [Step]) { self.steps = steps }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += unwrapInboundIn(data).readableBytes
            while let step = steps.first, received >= step.after {
                steps.removeFirst()
                if !step.send.isEmpty {
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: step.send)), promise: nil)
                }
                if step.close {
                    context.close(promise: nil)
                    return
                }
            }
        }

        typealias OutboundOut = ByteBuffer
    }
}

@Suite("Binding against bad relays", .timeLimit(.minutes(1)))
struct BadRelayTests {
    @Test func denyBecomesDenied() async throws {
        let reason = "Unsupported protocol. Client: v1.0-draft2. Relay: v0.9."
        try await FakeRelay.run([
            .init(after: FakeRelay.clientInitSize, send: FakeRelay.relayFrame(.deny(magic: "iris-relay-magic", reason: reason)), close: true)
        ]) { endpoint in
            let outcome = await error { try await Skein.connect(to: endpoint, options: FakeRelay.iris) }
            #expect(outcome as? SkeinError == .denied(reason))
            // A member is refused the same way.
            let member = await error { try await Skein.serve(cluster: "x", to: endpoint, options: FakeRelay.iris, request: { $0.body }) }
            #expect(member as? SkeinError == .denied(reason))
        }
    }

    @Test func denyWithoutClosingStillFailsTheHandshake() async throws {
        try await FakeRelay.run([
            .init(after: 1, send: FakeRelay.relayFrame(.deny(magic: "iris-relay-magic", reason: "go away")))
        ]) { endpoint in
            let outcome = try await within(.seconds(10), "connect") { await error { try await Skein.connect(to: endpoint, options: FakeRelay.iris) } }
            #expect(outcome as? SkeinError == .denied("go away"))
        }
    }

    @Test(arguments: [
        ("HTTP/1.1 400 Bad Request\r\n\r\n", "text instead of frames"),
        ("\u{7f}\u{7f}\u{7f}", "unknown opcode"),
    ])
    func garbageInsteadOfInitIsAProtocolViolation(garbage: String, what: String) async throws {
        try await FakeRelay.run([.init(after: 1, send: Array(garbage.utf8))]) { endpoint in
            let outcome = try await within(.seconds(10), "connect") { await error { try await Skein.connect(to: endpoint, options: FakeRelay.iris) } }
            guard (outcome as? SkeinError)?.code == .protocolViolation else {
                Issue.record("\(what): expected protocolViolation, got \(String(describing: outcome))")
                return
            }
        }
    }

    @Test func wrongMagicIsAProtocolViolation() async throws {
        try await FakeRelay.run([
            .init(after: FakeRelay.clientInitSize, send: FakeRelay.relayFrame(.initialize(magic: "not-iris-magic", version: "v1.0-draft2")))
        ]) { endpoint in
            let outcome = try await within(.seconds(10), "connect") { await error { try await Skein.connect(to: endpoint, options: FakeRelay.iris) } }
            guard (outcome as? SkeinError)?.code == .protocolViolation else {
                Issue.record("expected protocolViolation, got \(String(describing: outcome))")
                return
            }
        }
    }

    @Test func frameBeforeInitIsAProtocolViolation() async throws {
        try await FakeRelay.run([
            .init(after: 1, send: FakeRelay.relayFrame(.reply(id: 0, outcome: .timedOut)))
        ]) { endpoint in
            let outcome = try await within(.seconds(10), "connect") { await error { try await Skein.connect(to: endpoint, options: FakeRelay.iris) } }
            guard (outcome as? SkeinError)?.code == .protocolViolation else {
                Issue.record("expected protocolViolation, got \(String(describing: outcome))")
                return
            }
        }
    }

    @Test func garbageAfterTheHandshakeFailsPendingCalls() async throws {
        try await FakeRelay.run([
            .init(after: FakeRelay.clientInitSize, send: FakeRelay.relayInit),
            // The first request: answer with an invalid bool in a REPLY.
            .init(after: FakeRelay.clientInitSize + 1, send: [0x05, 0x00, 0x07]),
        ]) { endpoint in
            let connection = try await Skein.connect(to: endpoint, options: FakeRelay.iris)
            let outcome = try await within(.seconds(10), "the request") {
                await error { try await connection.request(cluster: "echo", "hi", timeout: .seconds(30)) }
            }
            guard (outcome as? SkeinError)?.code == .protocolViolation else {
                Issue.record("expected protocolViolation, got \(String(describing: outcome))")
                return
            }
            // The connection is gone; later calls fail the same way, at once.
            let later = await error { try await connection.request(cluster: "echo", "again", timeout: .seconds(30)) }
            #expect(later as? SkeinError == outcome as? SkeinError)
            #expect(!(await connection.waitUntilClosed()).isEmpty)
        }
    }

    @Test func silentServerTimesOutTheHandshake() async throws {
        try await FakeRelay.run([]) { endpoint in
            var impatient = FakeRelay.iris
            impatient.handshakeTimeout = .milliseconds(300)
            let options = impatient
            let start = ContinuousClock.now
            let outcome = try await within(.seconds(10), "connect") { await error { try await Skein.connect(to: endpoint, options: options) } }
            guard (outcome as? SkeinError)?.code == .cannotConnect else {
                Issue.record("expected cannotConnect, got \(String(describing: outcome))")
                return
            }
            #expect(ContinuousClock.now - start >= .milliseconds(290))
        }
    }

    @Test func serverClosingDuringTheHandshakeFailsConnect() async throws {
        try await FakeRelay.run([.init(after: 1, send: [], close: true)]) { endpoint in
            let outcome = try await within(.seconds(10), "connect") { await error { try await Skein.connect(to: endpoint, options: FakeRelay.iris) } }
            #expect(outcome is SkeinError, "got \(String(describing: outcome))")
        }
    }

    @Test func anIrisNodeDenyingSkein2AndSkein1GetsV1Draft2Instead() async throws {
        let reason = "Unsupported protocol. Client: skein/1. Relay: v1.0-draft2."
        try await FakeRelay.run(connections: [
            // skein/2's INIT is as long as skein/1's.
            [.init(after: FakeRelay.skein1InitSize, send: FakeRelay.relayFrame(.deny(magic: "iris-relay-magic", reason: reason)), close: true)],
            [.init(after: FakeRelay.skein1InitSize, send: FakeRelay.relayFrame(.deny(magic: "iris-relay-magic", reason: reason)), close: true)],
            [
                .init(after: FakeRelay.clientInitSize, send: FakeRelay.relayInit),
                // The request (22 bytes): answered with a v1.0-draft2 timeout.
                .init(after: FakeRelay.clientInitSize + 1, send: FakeRelay.relayFrame(.reply(id: 0, outcome: .timedOut))),
            ],
        ]) { endpoint in
            let connection = try await within(.seconds(10), "connect") { try await Skein.connect(to: endpoint) }
            #expect(connection.protocolVersion == "v1.0-draft2")
            let outcome = try await within(.seconds(10), "the request") {
                await error { try await connection.request(cluster: "echo", "hi", timeout: .seconds(30)) }
            }
            #expect(outcome as? SkeinError == .timedOut)
        }
    }

    @Test func aRelayBeforeSkein2GetsSkein1() async throws {
        let reason = "Unsupported protocol. Client: skein/2. Relay: v1.0-draft2, skein/1."
        try await FakeRelay.run(connections: [
            [.init(after: FakeRelay.skein1InitSize, send: FakeRelay.relayFrame(.deny(magic: "iris-relay-magic", reason: reason)), close: true)],
            [.init(after: FakeRelay.skein1InitSize, send: FakeRelay.relayFrame(.initialize(magic: "iris-relay-magic", version: "skein/1")))],
        ]) { endpoint in
            let connection = try await within(.seconds(10), "connect") { try await Skein.connect(to: endpoint) }
            #expect(connection.protocolVersion == "skein/1")
            // A pattern would be a plain topic to this relay: refused here, before it is sent.
            let outcome = await error { try await connection.subscribe(topic: "orders.*") }
            #expect((outcome as? SkeinError)?.code == .invalidName)
        }
    }

    @Test func askingForSkein1OnlyFailsAgainstAnIrisNode() async throws {
        let reason = "Unsupported protocol. Client: skein/1. Relay: v1.0-draft2."
        try await FakeRelay.run([
            .init(after: FakeRelay.skein1InitSize, send: FakeRelay.relayFrame(.deny(magic: "iris-relay-magic", reason: reason)), close: true)
        ]) { endpoint in
            var skein1Only = ConnectionOptions()
            skein1Only.protocolVersion = .skein1
            let options = skein1Only
            let outcome = try await within(.seconds(10), "connect") { await error { try await Skein.connect(to: endpoint, options: options) } }
            #expect(outcome as? SkeinError == .denied(reason))
        }
    }

    @Test func aSkein1FrameOnAV1Draft2ConnectionIsAProtocolViolation() async throws {
        try await FakeRelay.run([
            .init(after: FakeRelay.clientInitSize, send: FakeRelay.relayInit),
            .init(after: FakeRelay.clientInitSize + 1, send: FakeRelay.relayFrame(.requestFailed(id: 0, reason: .noMembers, detail: "echo"))),
        ]) { endpoint in
            let connection = try await Skein.connect(to: endpoint, options: FakeRelay.iris)
            let outcome = try await within(.seconds(10), "the request") {
                await error { try await connection.request(cluster: "echo", "hi", timeout: .seconds(30)) }
            }
            guard (outcome as? SkeinError)?.code == .protocolViolation else {
                Issue.record("expected protocolViolation, got \(String(describing: outcome))")
                return
            }
        }
    }

    @Test func aRelayAnsweringWithAnUnknownVersionIsAProtocolViolation() async throws {
        try await FakeRelay.run([
            .init(after: FakeRelay.skein1InitSize, send: FakeRelay.relayFrame(.initialize(magic: "iris-relay-magic", version: "skein/9")))
        ]) { endpoint in
            let outcome = try await within(.seconds(10), "connect") { await error { try await Skein.connect(to: endpoint) } }
            guard (outcome as? SkeinError)?.code == .protocolViolation else {
                Issue.record("expected protocolViolation, got \(String(describing: outcome))")
                return
            }
        }
    }

    @Test func nothingListening() async throws {
        // A port bound but not listening: connections to it are refused, and while the socket is
        // held no other test's listener can take the port (closing a listener first let a relay
        // started meanwhile by another test get the same port, and the connect succeeded).
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        #expect(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        let outcome = await error { try await Skein.connect(to: .tcp(host: "127.0.0.1", port: port)) }
        guard (outcome as? SkeinError)?.code == .cannotConnect else {
            Issue.record("expected cannotConnect, got \(String(describing: outcome))")
            return
        }
    }
}
