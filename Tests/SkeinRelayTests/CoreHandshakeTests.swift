import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay

@Suite("Core: handshake and connection lifecycle")
struct CoreHandshakeTests {
    let relayINIT = RelayFrame.initialize(magic: "iris-relay-magic", version: "v1.0-draft2")

    @Test("INIT from a plain client is answered with the relay's INIT")
    func plainClient() {
        var d = CoreDriver()
        let c = d.open()
        let actions = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: ""), from: c)
        #expect(actions == [.send(c, relayINIT), .report(.handshakeCompleted(c, cluster: ""))])
        #expect(d.core.clusterMembership.isEmpty)
    }

    @Test("INIT with a cluster makes the connection a member")
    func member() {
        var d = CoreDriver()
        let m = d.open()
        let actions = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: m)
        #expect(actions == [.send(m, relayINIT), .report(.handshakeCompleted(m, cluster: "echo"))])
        #expect(d.core.clusterMembership == ["echo": 1])
    }

    @Test(
        "wrong magic closes the socket without a frame",
        arguments: ["", "iris-relay-magic", "iris-client-magic ", "IRIS-CLIENT-MAGIC"])
    func wrongMagic(_ magic: String) {
        var d = CoreDriver()
        let c = d.open()
        let actions = d.send(.initialize(magic: magic, version: "v1.0-draft2", cluster: ""), from: c)
        #expect(actions.sent.isEmpty)
        #expect(actions.disconnected == [c])
        #expect(actions.reports.count == 1)
        // Nothing it sends afterwards has any effect.
        #expect(d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: c).isEmpty)
        #expect(d.core.clusterMembership.isEmpty)
    }

    @Test("a version the relay does not speak is denied with the reason, then closed", arguments: ["skein/3", "v1.0-draft1", "", "v1.0"])
    func wrongVersion(_ version: String) {
        var d = CoreDriver()
        let c = d.open()
        let actions = d.send(.initialize(magic: "iris-client-magic", version: version, cluster: "echo"), from: c)
        let reason = "Unsupported protocol. Client: \(version). Relay: v1.0-draft2, skein/1, skein/2."
        #expect(actions.effects == [.send(c, .deny(magic: "iris-relay-magic", reason: reason)), .disconnect(c)])
        #expect(actions.reports == [.handshakeRejected(c, reason: reason)])
        #expect(d.core.clusterMembership.isEmpty, "a denied connection never joins its cluster")
    }

    @Test("every version spoken is answered with itself", arguments: ["skein/2", "skein/1", "v1.0-draft2"])
    func versionsSpoken(_ version: String) {
        var d = CoreDriver()
        let c = d.open()
        let actions = d.send(.initialize(magic: "iris-client-magic", version: version, cluster: "echo"), from: c)
        #expect(actions.effects == [.send(c, .initialize(magic: "iris-relay-magic", version: version))])
        #expect(d.core.clusterMembership == ["echo": 1])
    }

    static let notINIT: [ClientFrame] = [
        .close,
        .request(id: 0, cluster: "echo", body: buffer("hello"), timeoutMillis: 1000),
        .reply(id: 0, outcome: .success(buffer("x"))),
        .broadcast(cluster: "echo", message: buffer("x")),
        .subscribe(topic: "t"),
        .publish(topic: "t", event: buffer("x")),
        .tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000),
        .tunnelClose(tunnelID: 7),
    ]

    @Test("a first frame other than INIT closes the socket without a frame", arguments: notINIT)
    func firstFrameNotInit(_ frame: ClientFrame) {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let c = d.open()
        let actions = d.send(frame, from: c)
        #expect(actions.effects == [.disconnect(c)])
        #expect(d.core.pendingRequestCount == 0)
        #expect(d.core.topicSubscriptions.isEmpty)
        _ = member
    }

    @Test("INIT sent twice is a violation: CLOSE with a reason, then the socket")
    func initTwice() {
        var d = CoreDriver()
        let c = d.connect(cluster: "echo")
        let actions = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: ""), from: c)
        #expect(actions.effects == [.send(c, .close(reason: "protocol violation: INIT sent twice")), .disconnect(c)])
        #expect(actions.violations == ["protocol violation: INIT sent twice"])
        #expect(d.core.clusterMembership.isEmpty, "a closed member leaves its cluster at once")
    }

    @Test("no INIT within the handshake timeout closes the socket")
    func handshakeTimeout() {
        var d = CoreDriver { $0.handshakeTimeout = .seconds(5) }
        let silent = d.open()
        let polite = d.connect()
        #expect(d.core.nextDeadline == d.now + .seconds(5))
        #expect(d.advance(.milliseconds(4999)).isEmpty)
        let actions = d.advance(.milliseconds(1))
        #expect(actions.effects == [.disconnect(silent)], "only the silent connection is closed, and without a frame")
        #expect(actions.reports == [.handshakeRejected(silent, reason: "no INIT within 5000 ms")])
        // A late INIT changes nothing.
        #expect(d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: ""), from: silent).isEmpty)
        _ = polite
    }

    @Test("a silent connection does not delay another's handshake")
    func silentDoesNotBlock() {
        var d = CoreDriver()
        _ = d.open()
        _ = d.open()
        let c = d.open()
        let actions = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: ""), from: c)
        #expect(actions.frames(to: c) == [relayINIT])
    }

    @Test("malformed input before the handshake closes without a frame, after it with a CLOSE reason")
    func malformed() {
        var d = CoreDriver()
        let early = d.open()
        #expect(d.malformed(early, .unknownOpcode(0x0e)).effects == [.disconnect(early)])

        let late = d.connect()
        let actions = d.malformed(late, .invalidBool(2))
        #expect(actions.effects == [.send(late, .close(reason: "protocol violation: invalid bool byte 0x2")), .disconnect(late)])
        #expect(actions.violations.count == 1)
        // A second error for the same connection (more garbage in the same read) does nothing.
        #expect(d.malformed(late, .unknownOpcode(0xff)).isEmpty)
    }

    @Test("CLOSE from the binding: 02 00, then the socket; the member leaves its cluster")
    func gracefulClose() {
        var d = CoreDriver()
        let m = d.connect(cluster: "echo")
        let actions = d.send(.close, from: m)
        #expect(actions.effects == [.send(m, .close(reason: "")), .disconnect(m)])
        #expect(actions.reports == [.connectionClosed(m, graceful: true)])
        #expect(d.core.clusterMembership.isEmpty)
        #expect(d.send(.subscribe(topic: "t"), from: m).isEmpty, "frames after CLOSE are ignored")
        #expect(d.lose(m).effects.isEmpty)
        #expect(d.core.connectionCount == 0)
    }

    @Test("shutdown closes every open connection with the reason")
    func closeAll() {
        var d = CoreDriver()
        let a = d.connect()
        let b = d.connect(cluster: "echo")
        let waiting = d.open()
        var actions: [RelayAction] = []
        d.core.closeAll(reason: "relay shutting down", actions: &actions)
        #expect(actions.closeReason(of: a) == "relay shutting down")
        #expect(actions.closeReason(of: b) == "relay shutting down")
        #expect(actions.frames(to: waiting).isEmpty, "a connection before its handshake gets no CLOSE")
        #expect(Set(actions.disconnected) == [a, b, waiting])
        #expect(d.core.clusterMembership.isEmpty)
    }

    @Test("a lost connection leaves every table")
    func lostConnection() {
        var d = CoreDriver()
        let m = d.connect(cluster: "echo")
        _ = d.send(.subscribe(topic: "t"), from: m)
        #expect(d.core.topicSubscriptions == ["t": 1])
        #expect(d.lose(m).reports == [.connectionClosed(m, graceful: false)])
        #expect(d.core.clusterMembership.isEmpty)
        #expect(d.core.topicSubscriptions.isEmpty)
        #expect(d.core.connectionCount == 0)
        #expect(d.lose(m).isEmpty, "closing twice is harmless")
    }
}
