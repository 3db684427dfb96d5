import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SkeinCrypto
@testable import SkeinRelay
import SkeinWire
import Testing
import SkeinTestSupport

/// One relay's peer links, in process, recording what they see.
final class PeerNode: Sendable {
    let links: PeerLinks
    let group: MultiThreadedEventLoopGroup
    let port: Int
    let address: String
    private let state = NIOLockedValueBox(State())

    struct State {
        var frames: [(PeerFrame, String)] = []
        var up: [String] = []
        var down: [String] = []
        /// `connectionRefused` of each link that went down, in order.
        var refused: [Bool] = []
    }

    static func start(name: String, keyring: Keyring, network: String = "test", settings: PeerLinkSettings = PeerLinkSettings()) async throws -> PeerNode {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var logger = Logger(label: "peer.\(name)")
        logger.logLevel = .critical
        let nodeID = SecureRandom.bytes(16)
        let links = PeerLinks(
            identity: PeerIdentity(network: network, nodeID: nodeID, name: name, address: ""),
            keyring: keyring, settings: settings, eventLoop: group.next(), logger: logger)
        let port = try await links.listen(host: "127.0.0.1", port: 0)
        try await links.eventLoop.submit { links.advertise("127.0.0.1:\(port)") }.get()
        let node = PeerNode(links: links, group: group, port: port)
        try await links.eventLoop.submit {
            links.onFrame = { frame, link in node.state.withLockedValue { $0.frames.append((frame, link.peerName ?? "?")) } }
            links.onLinkUp = { link in node.state.withLockedValue { $0.up.append(link.peerName ?? "?") } }
            links.onLinkDown = { link in
                node.state.withLockedValue {
                    $0.down.append(link.closeReason ?? "")
                    $0.refused.append(link.connectionRefused)
                }
            }
        }.get()
        return node
    }

    private init(links: PeerLinks, group: MultiThreadedEventLoopGroup, port: Int) {
        self.links = links
        self.group = group
        self.port = port
        self.address = "127.0.0.1:\(port)"
    }

    var frames: [(PeerFrame, String)] { state.withLockedValue { $0.frames } }
    var up: [String] { state.withLockedValue { $0.up } }
    var down: [String] { state.withLockedValue { $0.down } }
    var refused: [Bool] { state.withLockedValue { $0.refused } }

    func send(_ frame: PeerFrame, to other: PeerNode) async throws {
        try await links.eventLoop.submit { self.links.link(to: other.address).send(frame) }.get()
    }

    func send(_ frames: [PeerFrame], to other: PeerNode) async throws {
        try await links.eventLoop.submit {
            let link = self.links.link(to: other.address)
            for frame in frames { link.send(frame) }
        }.get()
    }

    var establishedCount: Int {
        get async throws { try await links.eventLoop.submit { self.links.establishedLinks.count }.get() }
    }

    func update(keyring: Keyring) async throws {
        try await links.eventLoop.submit { self.links.update(keyring: keyring) }.get()
    }

    func stop() async {
        await links.closeAll(reason: "test over")
        try? await group.shutdownGracefully()
    }
}

@Suite("Peer links", .timeLimit(.minutes(1)))
struct PeerLinkTests {
    let key = NetworkKey.generate()

    @Test("two relays with one key complete a handshake and exchange frames both ways")
    func handshakeAndFrames() async throws {
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key))
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key))
        defer { Task { await a.stop(); await b.stop() } }

        try await a.send(.membership(ByteBuffer(string: "hello b")), to: b)
        await eventually("b receives the frame") { b.frames.count == 1 }
        #expect(b.frames.first?.0 == .membership(ByteBuffer(string: "hello b")))
        #expect(b.frames.first?.1 == "a")
        #expect(b.up == ["a"])

        // B answers on the link A opened (found by A's advertised address).
        try await b.send(.membership(ByteBuffer(string: "hello a")), to: a)
        await eventually("a receives the answer") { a.frames.count == 1 }
        #expect(a.frames.first?.1 == "b")
        #expect(try await a.establishedCount == 1)
        #expect(try await b.establishedCount == 1)
    }

    @Test("a relay with another key is refused; each side knows only what it may")
    func wrongKeyRefused() async throws {
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key))
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: NetworkKey.generate()))
        defer { Task { await a.stop(); await b.stop() } }

        try await a.send(.membership(ByteBuffer(string: "secret")), to: b)
        await eventually("both sides close the link") { a.down.count == 1 && b.down.count == 1 }
        #expect(a.down.first == "handshake rejected: the peer refused the handshake")
        #expect(b.down.first?.hasPrefix("handshake rejected: the peer uses key \(key.keyID)") == true)
        #expect(b.frames.isEmpty && a.up.isEmpty && b.up.isEmpty)
    }

    @Test("a relay of another network is refused, and cannot tell that from a wrong key")
    func wrongNetworkRefused() async throws {
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key), network: "eu")
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key), network: "us")
        defer { Task { await a.stop(); await b.stop() } }

        try await a.send(.ping(token: 1), to: b)
        await eventually("both sides close the link") { a.down.count == 1 && b.down.count == 1 }
        #expect(a.down.first == "handshake rejected: the peer refused the handshake")
        #expect(b.down.first == "handshake rejected: the peer belongs to another network")
    }

    @Test("many frames and a large one arrive complete and in order per class")
    func bulkAndOrder() async throws {
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key))
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key))
        defer { Task { await a.stop(); await b.stop() } }

        let big = ByteBuffer(bytes: (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        var frames: [PeerFrame] = [.tunnelData(id: 1, sizeOrContinuation: UInt64(big.readableBytes), chunk: big)]
        frames += (0..<5000).map { .publish(topic: "t", body: ByteBuffer(string: "\($0)")) }
        try await a.send(frames, to: b)
        let count = frames.count
        await eventually(within: .seconds(20), "b receives every frame") { b.frames.count == count }
        let publishes = b.frames.map(\.0).filter { $0.kind == .publish }
        #expect(publishes == frames.filter { $0.kind == .publish })
        #expect(b.frames.map(\.0).contains(frames[0]))
    }

    @Test("records of every size, straddling socket reads anywhere, arrive intact and in order")
    func recordsStraddlingReads() async throws {
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key))
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key))
        defer { Task { await a.stop(); await b.stop() } }

        // Sizes from 1 byte to past a whole record, so records of every length cross the
        // boundaries of whatever reads the socket makes; some batches small, some large.
        var sent: [PeerFrame] = []
        // Kept small (about 3 MB): a debug build seals slowly, and other suites time things.
        for batch in 0..<16 {
            var frames: [PeerFrame] = []
            for i in 0..<(batch % 5 == 0 ? 1 : 6) {
                let n = (batch * 6 + i) &* 7919 % 70_000 + 1
                // Neighbouring frames differ in every byte, so bytes from the wrong frame show.
                let body = ByteBuffer(repeating: UInt8(truncatingIfNeeded: batch &* 31 &+ i &* 7 &+ 1), count: n)
                frames.append(i % 3 == 0
                    ? .tunnelData(id: UInt64(batch), sizeOrContinuation: UInt64(i), chunk: body)
                    : .publish(topic: "t\(i % 2)", body: body))
            }
            sent += frames
            try await a.send(frames, to: b)
            if batch % 4 == 0 { try await Task.sleep(for: .milliseconds(2)) }
        }
        let count = sent.count
        await eventually(within: .seconds(30), "b receives every frame") { b.frames.count == count }
        for kind in [PeerFrame.Kind.tunnelData, .publish] {
            #expect(b.frames.map(\.0).filter { $0.kind == kind } == sent.filter { $0.kind == kind })
        }
    }

    @Test("garbage on the peer port ends only that connection")
    func garbageRefused() async throws {
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key))
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key))
        defer { Task { await a.stop(); await b.stop() } }

        let raw = try await WireClient.connect(port: b.port)
        try await raw.write(ByteBuffer(bytes: [0xff, 0xff] + Array(repeating: 0x41, count: 100)))
        _ = try await raw.readToEnd()
        #expect(b.down.first?.hasPrefix("handshake rejected:") == true)

        try await a.send(.ping(token: 9), to: b)
        try await a.send(.membership(ByteBuffer(string: "still here")), to: b)
        await eventually("b still serves a") { b.frames.count == 1 }
    }

    @Test("keys rotate without a refused link: add, promote, retire")
    func keyRotation() async throws {
        let old = key
        let new = NetworkKey.generate()
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: old))
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: old))
        defer { Task { await a.stop(); await b.stop() } }
        var sent = 0
        func exchange() async throws {
            sent += 1
            try await a.send(.membership(ByteBuffer(string: "m\(sent)")), to: b)
            let expected = sent
            await eventually("b receives message \(expected)") { b.frames.count == expected }
        }
        try await exchange()

        // 1. Install the new key as accepted everywhere.
        try await a.update(keyring: Keyring(primary: old, accepted: [new]))
        try await b.update(keyring: Keyring(primary: old, accepted: [new]))
        try await exchange()
        // 2. Make it primary, one relay at a time: both keys are still accepted.
        try await a.update(keyring: Keyring(primary: new, accepted: [old]))
        try await exchange()
        try await b.update(keyring: Keyring(primary: new, accepted: [old]))
        try await exchange()
        // 3. Retire the old key: the link made with it closes and a new one uses the new key.
        try await a.update(keyring: Keyring(primary: new))
        try await b.update(keyring: Keyring(primary: new))
        await eventually("the old link closes") { a.down.contains { $0.contains("retired") } }
        try await exchange()
        let links = a.links
        let keyIDs = try await links.eventLoop.submit { links.establishedLinks.compactMap(\.keyID) }.get()
        #expect(keyIDs == [new.keyID])
        #expect(!a.down.contains { $0.hasPrefix("handshake rejected") })
        #expect(!b.down.contains { $0.hasPrefix("handshake rejected") })
    }

    @Test("relays that dial each other at once keep exactly one link")
    func simultaneousDial() async throws {
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key))
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key))
        defer { Task { await a.stop(); await b.stop() } }
        async let x: Void = a.send(.membership(ByteBuffer(string: "from a")), to: b)
        async let y: Void = b.send(.membership(ByteBuffer(string: "from b")), to: a)
        _ = try await (x, y)
        await eventually("both frames arrive") { a.frames.count == 1 && b.frames.count == 1 }
        await eventually("one link on each side") {
            let (na, nb) = (try await a.establishedCount, try await b.establishedCount)
            return na == 1 && nb == 1
        }
        // Later frames flow on the surviving link.
        try await a.send(.membership(ByteBuffer(string: "again")), to: b)
        await eventually("the next frame arrives") { b.frames.count == 2 }
    }

    @Test("a dial to a port nobody listens on is refused; to a stopped relay it is not")
    func connectionRefused() async throws {
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key))
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key))
        defer { Task { await a.stop() } }
        // b's event loop stops (as under SIGSTOP): its kernel still completes TCP handshakes.
        let blocker = ConditionLock(value: 0)
        b.links.eventLoop.execute { _ = blocker.lock(whenValue: 1); blocker.unlock() }
        try await a.send(.ping(token: 1), to: b)
        try await Task.sleep(for: .milliseconds(300))
        #expect(!a.refused.contains(true))
        blocker.lock()
        blocker.unlock(withValue: 1)
        await b.stop()
        // b is gone: a fresh dial to its port is refused, and the link says so.
        let downBefore = a.down.count
        try await a.links.eventLoop.submit { a.links.link(to: "127.0.0.1:\(b.port)").send(.ping(token: 2)) }.get()
        await eventually("the dial fails") { a.refused.count > downBefore && a.refused.last == true }
    }

    @Test("a peer that stops answering is closed after the idle timeout")
    func idleTimeout() async throws {
        var settings = PeerLinkSettings()
        settings.keepaliveInterval = .milliseconds(50)
        settings.idleTimeout = .milliseconds(300)
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key), settings: settings)
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key), settings: settings)
        defer { Task { await a.stop() } }
        try await a.send(.ping(token: 1), to: b)
        await eventually("the link is up") { try await a.establishedCount == 1 }
        // B's event loop stops processing: its socket stays open but it answers nothing.
        let blocker = ConditionLock(value: 0)
        b.links.eventLoop.execute { _ = blocker.lock(whenValue: 1); blocker.unlock() }
        await eventually("a gives up on b") { a.down.contains { $0.hasPrefix("no traffic for 300 ms") } }
        blocker.lock()
        blocker.unlock(withValue: 1)
        await b.stop()
    }

    @Test("a link with nothing but keepalives closes gracefully when idle, and the next frame redials")
    func idleLinkCloses() async throws {
        var settings = PeerLinkSettings()
        settings.keepaliveInterval = .milliseconds(50)
        settings.idleClose = .milliseconds(300)
        let a = try await PeerNode.start(name: "a", keyring: Keyring(primary: key), settings: settings)
        let b = try await PeerNode.start(name: "b", keyring: Keyring(primary: key), settings: settings)
        defer { Task { await a.stop(); await b.stop() } }
        try await a.send(.membership(ByteBuffer(string: "one")), to: b)
        await eventually("b receives the first frame") { b.frames.count == 1 }
        await eventually("the idle link closes on both sides") { a.down.contains { $0.contains("idle") } && b.down.contains { $0.contains("idle") } }
        let graceful = try await a.links.eventLoop.submit { a.links.establishedLinks.isEmpty }.get()
        #expect(graceful)
        try await a.send(.membership(ByteBuffer(string: "two")), to: b)
        await eventually("a new link carries the next frame") { b.frames.count == 2 }
    }
}
