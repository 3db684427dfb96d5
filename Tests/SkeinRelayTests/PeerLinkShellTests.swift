import Logging
import NIOCore
import NIOEmbedded
import SkeinCrypto
import SkeinMembership
import SkeinWire
import Testing

@testable import SkeinRelay

/// The peer-link shell (`PeerLinks`, `PeerLink`, `PeerLinkHandler`) on `EmbeddedChannel`s: two
/// relays' links on one embedded event loop, their bytes moved by the test. No sockets.
struct EmbeddedLinkPair {
    let loop = EmbeddedEventLoop()
    let a: PeerLinks
    let b: PeerLinks
    let channelA = EmbeddedChannel()
    let channelB = EmbeddedChannel()
    let linkA: PeerLink
    let linkB: PeerLink
    let log = Log()

    final class Log: @unchecked Sendable {
        var frames: [String: [PeerFrame]] = ["a": [], "b": []]
        var up: [String] = []
        var down: [String: PeerLinkClosure] = [:]
    }

    init(keyA: NetworkKey, keyB: NetworkKey) throws {
        var logger = Logger(label: "links")
        logger.logLevel = .critical
        a = PeerLinks(
            identity: PeerIdentity(network: "test", nodeID: [UInt8](repeating: 1, count: 16), name: "a", address: "a:1"),
            keyring: Keyring(primary: keyA), settings: PeerLinkSettings(), eventLoop: loop, logger: logger)
        b = PeerLinks(
            identity: PeerIdentity(network: "test", nodeID: [UInt8](repeating: 2, count: 16), name: "b", address: "b:1"),
            keyring: Keyring(primary: keyB), settings: PeerLinkSettings(), eventLoop: loop, logger: logger)
        for (name, links) in [("a", a), ("b", b)] {
            let log = self.log
            links.onFrame = { frame, _ in log.frames[name]!.append(frame) }
            links.onLinkUp = { _ in log.up.append(name) }
            links.onLinkDown = { link in log.down[name] = link.closure }
        }
        try channelB.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        linkB = try b.accepted(channelB)
        linkA = try a.dial("b:1", over: channelA)
        try channelA.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try pump()
    }

    /// Moves bytes both ways until neither side writes.
    func pump() throws {
        for _ in 0..<50 {
            loop.run()
            var moved = false
            while let bytes = try channelA.readOutbound(as: ByteBuffer.self) {
                try channelB.writeInbound(bytes)
                moved = true
            }
            while let bytes = try channelB.readOutbound(as: ByteBuffer.self) {
                try channelA.writeInbound(bytes)
                moved = true
            }
            loop.run()
            if !moved { return }
        }
    }
}

@Suite("Peer-link shell on EmbeddedChannel")
struct PeerLinkShellTests {
    let key = NetworkKey.generate()

    @Test("a handshake, HELLO both ways, frames in order, then a GOODBYE that both sides see as graceful")
    func handshakeFramesAndGoodbye() throws {
        let pair = try EmbeddedLinkPair(keyA: key, keyB: key)
        #expect(pair.linkA.isEstablished && pair.linkB.isEstablished)
        #expect(Set(pair.log.up) == ["a", "b"])
        #expect(pair.a.link(toNode: NodeID(bytes: [UInt8](repeating: 2, count: 16))) === pair.linkA)
        #expect(pair.linkA.advertisedAddress == "b:1" && pair.linkB.peerName == "a")

        for n in 0..<3 { pair.linkA.send(.membership(ByteBuffer(string: "m\(n)"))) }
        pair.linkB.send(.ping(token: 7))
        try pair.pump()
        #expect(pair.log.frames["b"] == (0..<3).map { .membership(ByteBuffer(string: "m\($0)")) })
        // PING is answered by the link itself and passed on to nobody.
        #expect(pair.log.frames["a"]!.isEmpty)

        pair.linkA.close(reason: "test over", goodbye: true)
        try pair.pump()
        #expect(pair.log.down["a"]?.how == .goodbye && pair.log.down["a"]?.reason == "test over")
        #expect(pair.log.down["b"]?.how == .goodbye && pair.log.down["b"]?.reason.contains("test over") == true)
        #expect(pair.a.establishedLinks.isEmpty && pair.b.establishedLinks.isEmpty)
        // A frame sent after the goodbye is dropped, not queued.
        pair.linkA.send(.membership(ByteBuffer(string: "late")))
        try pair.pump()
        #expect(pair.log.frames["b"]!.count == 3)
    }

    @Test("a peer with another key is rejected at the handshake: both links end, neither established")
    func wrongKeyIsRejected() throws {
        let pair = try EmbeddedLinkPair(keyA: key, keyB: NetworkKey.generate())
        #expect(!pair.linkA.isEstablished && !pair.linkB.isEstablished)
        guard case .rejected = pair.log.down["b"]?.how else {
            Issue.record("b should reject the handshake: \(String(describing: pair.log.down["b"]))")
            return
        }
        #expect(pair.log.up.isEmpty && pair.log.down["a"] != nil)
    }

    @Test("a retired key closes the link made with it (SIGHUP)")
    func retiredKeyCloses() throws {
        let pair = try EmbeddedLinkPair(keyA: key, keyB: key)
        pair.a.update(keyring: Keyring(primary: NetworkKey.generate()))
        try pair.pump()
        #expect(pair.log.down["a"]?.reason.contains("was retired") == true)
        #expect(pair.log.down["b"]?.how == .goodbye)
    }
}
