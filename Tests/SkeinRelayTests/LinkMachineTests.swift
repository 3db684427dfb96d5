import NIOCore
import SkeinCrypto
import SkeinFederation
import SkeinMembership
@testable import SkeinRelay
import SkeinWire
import Testing
import SkeinTestSupport

/// The peer-link, link-index and gateway-link machines, driven directly: no sockets, no clock.
@Suite struct PeerLinkMachineTests {
    static let key = NetworkKey.generate()
    static let timers = PeerLinkMachine.Timers(keepaliveInterval: .seconds(5), idleTimeout: .seconds(15), idleClose: .seconds(10))
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func context(_ id: UInt8, key: NetworkKey = key, network: String = "test") -> PeerLinkMachine.HandshakeContext {
        .init(network: network, nodeID: [UInt8](repeating: id, count: 16), keyring: Keyring(primary: key), settings: HandshakeSettings())
    }

    /// Two machines whose handshake bytes are passed to each other until neither writes.
    struct Pair {
        var a = PeerLinkMachine(role: .initiator, hello: ("a:1", "a"), timers: PeerLinkMachineTests.timers)
        var b = PeerLinkMachine(role: .responder, hello: ("b:1", "b"), timers: PeerLinkMachineTests.timers)
        var cache = HandshakeReplayCache()
        var aActions: [PeerLinkAction] = []
        var bActions: [PeerLinkAction] = []

        mutating func connect(now: NIODeadline, a contextA: PeerLinkMachine.HandshakeContext, b contextB: PeerLinkMachine.HandshakeContext) {
            a.connected(now: now, ephemeralSecret: SecureRandom.bytes(32), context: contextA, actions: &aActions)
            b.connected(now: now, ephemeralSecret: SecureRandom.bytes(32), context: contextB, actions: &bActions)
            var toB = writes(aActions)
            var toA: [[UInt8]] = []
            var dummy = HandshakeReplayCache()
            while !toB.isEmpty || !toA.isEmpty {
                for bytes in toB {
                    var out: [PeerLinkAction] = []
                    _ = b.read(at: now)
                    b.handshake(bytes, now: now, replayCache: &cache, actions: &out)
                    bActions += out
                    toA += writes(out)
                }
                toB = []
                for bytes in toA {
                    var out: [PeerLinkAction] = []
                    _ = a.read(at: now)
                    a.handshake(bytes, now: now, replayCache: &dummy, actions: &out)
                    aActions += out
                    toB += writes(out)
                }
                toA = []
            }
        }

        func writes(_ actions: [PeerLinkAction]) -> [[UInt8]] {
            actions.compactMap { if case .write(let bytes) = $0, !bytes.isEmpty { return bytes } else { return nil } }
        }
    }

    @Test func aHandshakeEstablishesBothSidesAndHelloComesFirst() {
        var pair = Pair()
        pair.connect(now: t0, a: Self.context(1), b: Self.context(2))
        #expect(pair.a.isEstablished && pair.b.isEstablished)
        #expect(pair.a.peer?.nodeID == [UInt8](repeating: 2, count: 16))
        #expect(pair.b.peer?.node == NodeID(bytes: [UInt8](repeating: 1, count: 16)))
        for actions in [pair.aActions, pair.bActions] {
            let established = actions.firstIndex { if case .established = $0 { true } else { false } }
            let hello = actions.firstIndex { if case .sendFirst(.hello) = $0 { true } else { false } }
            #expect(established != nil && hello != nil && established! < hello!)
            #expect(actions.contains { if case .armTimer(let d) = $0 { d == t0 + .seconds(5) } else { false } })
        }
        #expect(pair.a.acceptsFrames && !pair.a.hasEnded)
    }

    @Test func aWrongKeyIsRejectedAndNeitherSideEstablishes() {
        var pair = Pair()
        pair.connect(now: t0, a: Self.context(1), b: Self.context(2, key: NetworkKey.generate()))
        #expect(!pair.a.isEstablished && !pair.b.isEstablished)
        guard case .rejected = pair.b.closure?.how else {
            Issue.record("the responder should reject: \(String(describing: pair.b.closure))")
            return
        }
        #expect(pair.b.closure?.wasEstablished == false)
        #expect(pair.bActions.contains { if case .close = $0 { true } else { false } })
    }

    @Test func aHandshakeThatNeverAnswersTimesOutAtItsDeadline() {
        var m = PeerLinkMachine(role: .initiator, hello: ("a:1", "a"), timers: Self.timers)
        var actions: [PeerLinkAction] = []
        m.connected(now: t0, ephemeralSecret: SecureRandom.bytes(32), context: Self.context(1), actions: &actions)
        guard case .armTimer(let deadline) = actions.last else {
            Issue.record("no handshake deadline")
            return
        }
        actions = []
        m.timerFired(now: deadline - .milliseconds(1), usefulFrames: 0, actions: &actions)
        #expect(!m.isClosed)
        m.timerFired(now: deadline, usefulFrames: 0, actions: &actions)
        #expect(m.closure?.how == .rejected(.timedOut))
    }

    @Test func quietLinksPingAndSilentOnesClose() {
        var pair = Pair()
        pair.connect(now: t0, a: Self.context(1), b: Self.context(2))
        var actions: [PeerLinkAction] = []
        // Useful traffic keeps it open; nothing sent or received for 5 s: a ping.
        pair.a.timerFired(now: t0 + .seconds(5), usefulFrames: 1, actions: &actions)
        #expect(actions.contains { if case .send(.ping(1)) = $0 { true } else { false } })
        #expect(actions.contains { if case .armTimer(let d) = $0 { d == t0 + .seconds(10) } else { false } })
        // A read at 9 s and a write: at 10 s nothing is due but the next tick.
        _ = pair.a.read(at: t0 + .seconds(9))
        pair.a.wrote(at: t0 + .seconds(9))
        actions = []
        pair.a.timerFired(now: t0 + .seconds(10), usefulFrames: 2, actions: &actions)
        #expect(!actions.contains { if case .send = $0 { true } else { false } })
        // Nothing received for 15 s: closed with a goodbye, and reported silent.
        actions = []
        pair.a.timerFired(now: t0 + .seconds(24), usefulFrames: 3, actions: &actions)
        #expect(actions.contains { if case .silent(let t) = $0 { t == .seconds(15) } else { false } })
        #expect(actions.contains { if case .send(.goodbye) = $0 { true } else { false } })
        #expect(actions.contains { if case .ended(let c) = $0 { c.how == .goodbye } else { false } })
        #expect(pair.a.hasEnded && !pair.a.acceptsFrames)
    }

    @Test func aLinkThatCarriesOnlyKeepalivesClosesIdle() {
        var pair = Pair()
        pair.connect(now: t0, a: Self.context(1), b: Self.context(2))
        var actions: [PeerLinkAction] = []
        for second in stride(from: 5, through: 9, by: 2) {
            _ = pair.a.read(at: t0 + .seconds(Int64(second)))
            pair.a.timerFired(now: t0 + .seconds(Int64(second)), usefulFrames: 0, actions: &actions)
            #expect(!pair.a.hasEnded)
        }
        _ = pair.a.read(at: t0 + .seconds(10))
        pair.a.timerFired(now: t0 + .seconds(10), usefulFrames: 0, actions: &actions)
        #expect(actions.contains { if case .ended(let c) = $0 { c.reason == "idle" && c.how == .goodbye } else { false } })
    }

    @Test func aGoodbyeLingersReadingThenCloses() {
        var pair = Pair()
        pair.connect(now: t0, a: Self.context(1), b: Self.context(2))
        var actions: [PeerLinkAction] = []
        pair.a.close(reason: "duplicate link", goodbye: true, now: t0, actions: &actions)
        #expect(actions.map(\.name) == ["send", "closeOutput", "armTimer", "ended"])
        // It still reads records (frames in flight are delivered), answers no ping.
        #expect(pair.a.read(at: t0 + .seconds(1)) == .records)
        actions = []
        pair.a.control(.ping(token: 9), now: t0, actions: &actions)
        #expect(actions.isEmpty)
        // Reported once: a second close, a goodbye from the peer, do nothing.
        pair.a.close(reason: "again", goodbye: true, now: t0, actions: &actions)
        pair.a.control(.goodbye(reason: "x"), now: t0, actions: &actions)
        #expect(actions.isEmpty)
        pair.a.timerFired(now: t0 + .seconds(2), usefulFrames: 0, actions: &actions)
        #expect(actions.map(\.name) == ["close"])
        #expect(pair.a.isClosed)
        #expect(pair.a.read(at: t0 + .seconds(3)) == .ignore)
    }

    @Test func thePeerClosingTheSocketIsBrokenAfterEstablishmentAndAFailureBefore() {
        var pair = Pair()
        pair.connect(now: t0, a: Self.context(1), b: Self.context(2))
        var actions: [PeerLinkAction] = []
        pair.a.socketClosed(actions: &actions)
        #expect(pair.a.closure?.how == .broken)
        #expect(pair.a.closure?.peer?.nodeID == [UInt8](repeating: 2, count: 16))
        pair.b.socketClosed(truncated: "short", actions: &actions)
        #expect(pair.b.closure?.reason.contains("inside a record") == true)

        var dial = PeerLinkMachine(role: .initiator, hello: ("a:1", "a"), timers: Self.timers)
        dial.failed("cannot connect", refused: true, actions: &actions)
        #expect(dial.closure?.how == .failed(refused: true))
        #expect(dial.closure?.wasEstablished == false)
    }

    @Test func aRetiredKeyClosesTheLinksMadeWithItAndADialEndedBeforeItConnectedClosesItsSocket() {
        var pair = Pair()
        pair.connect(now: t0, a: Self.context(1), b: Self.context(2))
        var actions: [PeerLinkAction] = []
        pair.a.keysChanged(Keyring(primary: Self.key, accepted: [NetworkKey.generate()]), now: t0, actions: &actions)
        #expect(actions.isEmpty && pair.a.isEstablished)
        pair.a.keysChanged(Keyring(primary: NetworkKey.generate()), now: t0, actions: &actions)
        #expect(actions.contains { if case .ended(let c) = $0 { c.reason.contains("was retired") && c.how == .goodbye } else { false } })

        var dial = PeerLinkMachine(role: .initiator, hello: ("a:1", "a"), timers: Self.timers)
        actions = []
        dial.close(reason: "superseded", goodbye: false, now: t0, actions: &actions)
        actions = []
        dial.connected(now: t0, ephemeralSecret: SecureRandom.bytes(32), context: Self.context(1), actions: &actions)
        #expect(actions.map(\.name) == ["close"])
    }

    @Test func helloAndPingAreAnsweredOnlyWhenEstablished() {
        var m = PeerLinkMachine(role: .responder, hello: ("b:1", "b"), timers: Self.timers)
        var actions: [PeerLinkAction] = []
        m.control(.hello(address: "a:1", name: "a"), now: t0, actions: &actions)
        m.control(.ping(token: 1), now: t0, actions: &actions)
        #expect(actions.isEmpty)
        var pair = Pair()
        pair.connect(now: t0, a: Self.context(1), b: Self.context(2))
        pair.b.control(.hello(address: "a:1", name: "a"), now: t0, actions: &actions)
        pair.b.control(.ping(token: 7), now: t0, actions: &actions)
        #expect(actions.map(\.name) == ["helloReceived", "send"])
        #expect(PeerFrame.ping(token: 1).isLinkControl && !PeerFrame.membership(ByteBuffer(bytes: [1])).isLinkControl)
    }
}

@Suite struct PeerLinkIndexTests {
    let low = [UInt8](repeating: 1, count: 16)
    let high = [UInt8](repeating: 9, count: 16)

    @Test func bothSidesOfACrossedDialKeepTheLinkTheLowerNodeDialed() {
        // Relay `low` and relay `high` dial each other: links 1 (low dialed) and 2 (high dialed).
        for order in [[1, 2], [2, 1]] {
            var atLow = PeerLinkIndex<Int>()
            var atHigh = PeerLinkIndex<Int>()
            atLow.dialed(1, 1, address: "high:1")
            atHigh.dialed(2, 2, address: "low:1")
            var kept: [Int] = []
            for link in order {
                var decisions: [PeerLinkIndex<Int>.Decision] = []
                let initiator = link == 1 ? low : high
                if atLow.hello(UInt64(link), link, node: NodeID(bytes: high), initiator: initiator, address: "high:1", decisions: &decisions) {
                    kept.append(link)
                }
                _ = atHigh.hello(UInt64(link), link, node: NodeID(bytes: low), initiator: initiator, address: "low:1", decisions: &decisions)
            }
            #expect(atLow.link(toNode: NodeID(bytes: high)) == 1)
            #expect(atHigh.link(toNode: NodeID(bytes: low)) == 1)
            #expect(kept.contains(1))
        }
    }

    @Test func theLoserHandsItsQueuedFramesToTheWinnerAndSaysGoodbye() {
        var index = PeerLinkIndex<Int>()
        var decisions: [PeerLinkIndex<Int>.Decision] = []
        #expect(index.hello(2, 2, node: NodeID(bytes: high), initiator: high, address: "high:1", decisions: &decisions))
        #expect(index.hello(1, 1, node: NodeID(bytes: high), initiator: low, address: "high:1", decisions: &decisions))
        #expect(decisions.map(\.summary) == ["adopt 2→1", "close 2 duplicate link goodbye"])
        #expect(index.count == 1)
    }

    @Test func aDialToAnAddressIsSupersededByTheLinkThatArrivedFromIt() {
        var index = PeerLinkIndex<Int>()
        index.dialed(5, 5, address: "high:1")
        #expect(index.link(toAddress: "high:1") == 5)
        var decisions: [PeerLinkIndex<Int>.Decision] = []
        #expect(index.hello(6, 6, node: NodeID(bytes: high), initiator: high, address: "high:1", decisions: &decisions))
        #expect(decisions.map(\.summary) == ["adopt 5→6", "close 5 superseded by an established link"])
        #expect(index.link(toAddress: "high:1") == 6)
    }

    @Test func aCrossedDialThatIsAlreadyEstablishedMeetsTheTieBreakInsteadOfBeingSuperseded() {
        // At relay `low`: its own dial (1) to high is established but its HELLO has not come;
        // high's dial (2) arrives and says HELLO first. Link 1 is left to the tie-break.
        var index = PeerLinkIndex<Int>()
        index.dialed(1, 1, address: "high:1")
        index.established(1)
        var decisions: [PeerLinkIndex<Int>.Decision] = []
        #expect(index.hello(2, 2, node: NodeID(bytes: high), initiator: high, address: "high:1", decisions: &decisions))
        #expect(decisions.isEmpty)
        #expect(index.hello(1, 1, node: NodeID(bytes: high), initiator: low, address: "high:1", decisions: &decisions))
        #expect(decisions.map(\.summary) == ["adopt 2→1", "close 2 duplicate link goodbye"])
        #expect(index.link(toNode: NodeID(bytes: high)) == 1 && index.link(toAddress: "high:1") == 1)
    }

    @Test func aLinkFoundByItsDialedNameThatLosesTheTieBreakLeavesNoEntryBehind() {
        // This relay (the higher id) dialed gw.example as link 3, whose peer says HELLO as
        // 10.0.0.9; then the peer's own link 4 (initiated by the lower id) wins the tie-break.
        var index = PeerLinkIndex<Int>()
        index.dialed(3, 3, address: "gw.example:7001")
        var decisions: [PeerLinkIndex<Int>.Decision] = []
        _ = index.hello(3, 3, node: NodeID(bytes: low), initiator: high, address: "10.0.0.9:7001", decisions: &decisions)
        #expect(index.hello(4, 4, node: NodeID(bytes: low), initiator: low, address: "10.0.0.9:7001", decisions: &decisions))
        #expect(decisions.map(\.summary) == ["adopt 3→4", "close 3 duplicate link goodbye"])
        let carried = index.closed(3, node: NodeID(bytes: low), address: "10.0.0.9:7001", dialed: "gw.example:7001")
        #expect(!carried)
        #expect(index.link(toAddress: "gw.example:7001") == nil && index.link(toAddress: "10.0.0.9:7001") == 4)
    }

    @Test func aDialedNameStaysFoundAfterThePeerAdvertisesAnotherAndEveryEntryGoesWithTheLink() {
        var index = PeerLinkIndex<Int>()
        index.dialed(3, 3, address: "gw.example:7001")
        var decisions: [PeerLinkIndex<Int>.Decision] = []
        _ = index.hello(3, 3, node: NodeID(bytes: high), initiator: low, address: "10.0.0.9:7001", decisions: &decisions)
        #expect(decisions.isEmpty)
        #expect(index.link(toAddress: "gw.example:7001") == 3 && index.link(toAddress: "10.0.0.9:7001") == 3)
        let wasCarrying = index.closed(3, node: NodeID(bytes: high), address: "10.0.0.9:7001", dialed: "gw.example:7001")
        #expect(wasCarrying)
        #expect(index.link(toAddress: "gw.example:7001") == nil && index.link(toAddress: "10.0.0.9:7001") == nil)
        #expect(index.link(toNode: NodeID(bytes: high)) == nil && index.count == 0)
        // A failed dial leaves nothing behind either.
        index.dialed(4, 4, address: "x:1")
        let failedDialWasCarrying = index.closed(4, node: nil, address: nil, dialed: "x:1")
        #expect(!failedDialWasCarrying)
        #expect(index.link(toAddress: "x:1") == nil)
    }
}

@Suite struct GatewayLinkMachineTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let node = testNode(7, group: 7)

    func machine(gateways: [String] = ["gw:1"]) -> GatewayLinkMachine {
        GatewayLinkMachine(
            settings: .init(network: "us", gateways: gateways, localNetwork: "eu", exports: [], redial: .milliseconds(500), maxRedial: .seconds(2)),
            now: t0)
    }

    @Test func itDialsEveryGatewayAtOnceAndBacksOffWhileTheyFail() {
        var m = machine(gateways: ["gw:1", "gw:2"])
        var actions: [GatewayLinkAction] = []
        m.timer(now: t0, actions: &actions)
        #expect(Set(actions.compactMap { if case .dial(let a) = $0 { a } else { nil } }) == ["gw:1", "gw:2"])
        #expect(m.nextDeadline == nil)
        // gw:1 fails four times: 0.5 s, 1 s, 2 s, 2 s (capped).
        var now = t0
        for expected in [500, 1000, 2000, 2000] as [Int64] {
            actions = []
            m.linkDown(1, dialed: "gw:1", graceful: false, reason: "refused", now: now, actions: &actions)
            #expect(m.nextDeadline == now + .milliseconds(expected))
            #expect(actions.last == .armTimer(now + .milliseconds(expected)))
            #expect(!actions.contains(.dial("gw:1")))
            actions = []
            m.timer(now: now + .milliseconds(expected - 1), actions: &actions)
            #expect(!actions.contains(.dial("gw:1")))
            now = now + .milliseconds(expected)
            m.timer(now: now, actions: &actions)
            #expect(actions.contains(.dial("gw:1")))
        }
    }

    @Test func gatewayComesFirstThenFramesPass() {
        var m = machine()
        var actions: [GatewayLinkAction] = []
        m.timer(now: t0, actions: &actions)
        actions = []
        m.linkUp(1, node: node, advertised: "gw:1", dialed: "gw:1", now: t0, actions: &actions)
        #expect(actions == [.send(1, .gateway(network: "eu", exports: []))])
        actions = []
        m.gateway(network: "us", exports: [], on: 1, now: t0, actions: &actions)
        #expect(actions == [.report(.linkUp(node)), .linked(node, network: "us", exports: [])])
        #expect(m.linked[node] == 1)
        actions = []
        m.received(.ping(token: 1), on: 1, actions: &actions)
        #expect(actions == [.deliver(node, .ping(token: 1))])
        actions = []
        m.received(.membership(ByteBuffer(bytes: [1, 2])), on: 1, actions: &actions)
        #expect(actions == [.close(1, reason: "membership does not cross networks", goodbye: true)])
    }

    @Test func aFrameBeforeGatewayOrAnotherNetworkEndsTheLink() {
        var m = machine()
        var actions: [GatewayLinkAction] = []
        m.linkUp(1, node: node, advertised: "gw:1", dialed: nil, now: t0, actions: &actions)
        actions = []
        m.received(.ping(token: 1), on: 1, actions: &actions)
        #expect(actions == [.report(.frameBeforeGateway(.ping)), .close(1, reason: "protocol violation: ping before GATEWAY", goodbye: false)])
        m.linkUp(2, node: node, advertised: "gw:1", dialed: nil, now: t0, actions: &actions)
        actions = []
        m.gateway(network: "asia", exports: [], on: 2, now: t0, actions: &actions)
        #expect(actions.first == .report(.wrongNetwork(said: "asia")))
        #expect(m.linked.isEmpty)
    }

    @Test func aLinkedGatewayThatGoesDownIsUnlinkedAndRedialedAtOnce() {
        var m = machine()
        var actions: [GatewayLinkAction] = []
        m.timer(now: t0, actions: &actions)
        m.dialed("gw:1", link: 1)
        m.linkUp(1, node: node, advertised: "gw:1", dialed: "gw:1", now: t0, actions: &actions)
        m.gateway(network: "us", exports: [], on: 1, now: t0, actions: &actions)
        actions = []
        m.linkDown(1, dialed: "gw:1", graceful: false, reason: "reset", now: t0 + .seconds(9), actions: &actions)
        #expect(actions == [.unlinked(node), .report(.linkDown(node, graceful: false, reason: "reset")), .dial("gw:1")])
        #expect(m.linked.isEmpty)
    }

    @Test func aGatewayThatDropsTheLinkSoonAfterGatewayBacksOffInsteadOfLooping() {
        var m = machine()
        var actions: [GatewayLinkAction] = []
        var now = t0
        m.timer(now: now, actions: &actions)
        for (round, expected) in [500, 1000, 2000].enumerated() {
            let link = UInt64(round + 1)
            m.dialed("gw:1", link: link)
            m.linkUp(link, node: node, advertised: "gw:1", dialed: "gw:1", now: now, actions: &actions)
            m.gateway(network: "us", exports: [], on: link, now: now, actions: &actions)
            actions = []
            m.linkDown(link, dialed: "gw:1", graceful: true, reason: "refused after GATEWAY", now: now + .milliseconds(10), actions: &actions)
            #expect(!actions.contains(.dial("gw:1")), "round \(round)")
            #expect(m.nextDeadline == now + .milliseconds(10) + .milliseconds(Int64(expected)), "round \(round)")
            now = m.nextDeadline!
            actions = []
            m.timer(now: now, actions: &actions)
            #expect(actions.contains(.dial("gw:1")))
        }
    }

    @Test func aDialThatLosesTheTieBreakToThePeersLinkUnderAnotherNameIsNoFailure() {
        // We dial gw:1; the peer's own link (7, advertising 10.0.0.9:1) is up and wins the
        // tie-break; our dial (8) ends as a duplicate. gw:1 is the peer's, reached by link 7:
        // neither a failure nor a reason to dial again.
        var m = machine()
        var actions: [GatewayLinkAction] = []
        m.timer(now: t0, actions: &actions)
        m.dialed("gw:1", link: 8)
        m.linkUp(7, node: node, advertised: "10.0.0.9:1", dialed: nil, now: t0, actions: &actions)
        m.gateway(network: "us", exports: [], on: 7, now: t0, actions: &actions)
        actions = []
        m.linkDown(8, dialed: "gw:1", node: node, graceful: true, reason: "duplicate link", now: t0, actions: &actions)
        #expect(!actions.contains { if case .report(.unreachable) = $0 { true } else { false } })
        #expect(!actions.contains(.dial("gw:1")) && m.nextDeadline == nil)
        m.timer(now: t0 + .seconds(30), actions: &actions)
        #expect(!actions.contains(.dial("gw:1")))
        // Frames still arriving on the ended link are nobody's: no violation, nothing passed on.
        actions = []
        m.received(.ping(token: 1), on: 8, linkEnded: true, actions: &actions)
        #expect(actions.isEmpty)
        // But a link still open that never said HELLO sends nothing before GATEWAY.
        m.received(.ping(token: 2), on: 9, actions: &actions)
        #expect(actions == [.report(.frameBeforeGateway(.ping)), .close(9, reason: "protocol violation: ping before GATEWAY", goodbye: false)])
        actions = []
        // When link 7 goes, gw:1 is dialed again (it was up long enough: at once).
        m.linkDown(7, dialed: nil, node: node, graceful: false, reason: "reset", now: t0 + .seconds(30), actions: &actions)
        #expect(actions.contains(.dial("gw:1")))
    }

    @Test func aDialAnsweredByALinkAlreadyOpenIsFollowedByThatLink() {
        // The dial to gw:1 got link 5, which was already open under another name and never says
        // GATEWAY; when it ends, gw:1 backs off and is dialed again (no dial is left hanging).
        var m = machine()
        var actions: [GatewayLinkAction] = []
        m.timer(now: t0, actions: &actions)
        m.dialed("gw:1", link: 5)
        m.linkUp(5, node: node, advertised: "10.0.0.9:1", dialed: nil, now: t0, actions: &actions)
        actions = []
        m.timer(now: t0 + .seconds(1), actions: &actions)
        #expect(!actions.contains(.dial("gw:1")))
        m.linkDown(5, dialed: nil, graceful: false, reason: "reset", now: t0 + .seconds(1), actions: &actions)
        #expect(m.nextDeadline == t0 + .seconds(1) + .milliseconds(500))
    }

    @Test func anInboundLinkFromAGatewayMeansItIsNotDialedAndALostDuplicateIsNoFailure() {
        var m = machine()
        var actions: [GatewayLinkAction] = []
        m.linkUp(1, node: node, advertised: "gw:1", dialed: nil, now: t0, actions: &actions)
        actions = []
        m.timer(now: t0, actions: &actions)
        #expect(!actions.contains(.dial("gw:1")))
        m.stop()
        actions = []
        m.linkDown(1, dialed: nil, graceful: true, reason: "bye", now: t0, actions: &actions)
        #expect(!actions.contains(.dial("gw:1")))

        var n = machine()
        n.timer(now: t0, actions: &actions)
        n.linkUp(2, node: node, advertised: "gw:1", dialed: nil, now: t0, actions: &actions)
        actions = []
        // Our dial lost the tie-break to the inbound link: not a failure, no backoff, no dial.
        n.linkDown(3, dialed: "gw:1", graceful: true, reason: "duplicate link", now: t0, actions: &actions)
        #expect(actions.isEmpty)
    }
}

extension PeerLinkAction {
    var name: String {
        switch self {
        case .write: "write"
        case .established: "established"
        case .sendFirst: "sendFirst"
        case .send: "send"
        case .closeOutput: "closeOutput"
        case .close: "close"
        case .reset: "reset"
        case .armTimer: "armTimer"
        case .helloReceived: "helloReceived"
        case .silent: "silent"
        case .ended: "ended"
        }
    }
}

extension PeerLinkIndex<Int>.Decision {
    var summary: String {
        switch self {
        case .adopt(let from, let into): "adopt \(from)→\(into)"
        case .close(let link, let reason, let goodbye): "close \(link) \(reason)\(goodbye ? " goodbye" : "")"
        }
    }
}
