import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinRouting
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

extension CoreDriver {
    /// A relay core of `network`, exporting `exports`, whose own node id is `self`.
    init(network: String, exports: [String: ExportTable] = [:], node: UInt64 = 1) {
        self.init { $0.federation = FederationPolicy(network: network, exports: exports) }
        core.localNode = testNode(node)
    }

    /// A relay of this network, with what it serves and the networks it is a gateway to.
    mutating func relay(
        _ n: UInt64, clusters: [String: UInt32] = [:], topics: Set<String> = [], gateways: [String: ExportTable]
    ) -> (NodeID, [RelayAction]) {
        let id = testNode(n)
        var actions: [RelayAction] = []
        core.relayUpdated(
            RemoteRelay(id: id, name: "r\(n)", zone: "", clusters: clusters, topics: topics, load: 0, gateways: gateways),
            now: now, actions: &actions)
        return (id, actions)
    }

    /// A gateway link to gateway `n` of `network`, which exports `exports` to this network.
    mutating func link(_ n: UInt64, network: String, exports: [ExportRule] = []) -> (NodeID, [RelayAction]) {
        let id = testNode(n, group: 9)
        var actions: [RelayAction] = []
        core.gatewayLinked(id, network: network, exports: exports, now: now, actions: &actions)
        return (id, actions)
    }

    mutating func unlink(_ node: NodeID, _ loss: RelayLoss = .linkBroken) -> [RelayAction] {
        var actions: [RelayAction] = []
        core.gatewayUnlinked(node, loss: loss, now: now, actions: &actions)
        return actions
    }

    mutating func fromGateway(_ frame: PeerFrame, _ node: NodeID) -> [RelayAction] {
        var actions: [RelayAction] = []
        core.receivedFromGateway(frame, from: node, now: now, actions: &actions)
        return actions
    }
}

let usExports = ExportTable([
    ExportRule(kinds: [.request, .tunnel], pattern: "db"),
    ExportRule(kinds: .broadcast, pattern: "workers"),
    ExportRule(kinds: .subscribe, pattern: "news.*"),
    ExportRule(kinds: .publish, pattern: "orders"),
])

@Suite("Relay core: federation, from the client's side (network eu)")
struct CoreFederationOriginTests {
    static let q = ByteBuffer(string: "q")

    @Test("a request to db@us goes to a gateway of this network, name and flags intact")
    func toGateway() {
        var d = CoreDriver(network: "eu")
        let (g, _) = d.relay(5, gateways: ["us": usExports])
        let client = d.connect(dialect: .skein1)
        let sent = d.send(.request(id: 1, cluster: "db@us", body: Self.q, timeoutMillis: 1000), from: client)
        guard case .request(let key, "db@us", 1000, .failFast, Self.q)? = sent.peerFrames(to: g).first else {
            Issue.record("\(sent)")
            return
        }
        let answer = d.peer(.reply(id: key, outcome: .success(ByteBuffer(string: "row"))), from: g)
        #expect(answer.frames(to: client) == [.reply(id: 1, outcome: .success(ByteBuffer(string: "row")))])
        // db@eu is this network's db: no federation involved.
        let local = d.send(.request(id: 2, cluster: "db@eu", body: Self.q, timeoutMillis: 1000), from: client)
        #expect(local.frames(to: client) == [.requestFailed(id: 2, reason: .noMembers, detail: "db@eu")])
    }

    @Test("no gateway to the network: skein/1 hears network unreachable at once; Iris waits for one")
    func unreachable() {
        var d = CoreDriver(network: "eu")
        let skein = d.connect(dialect: .skein1)
        let iris = d.connect()
        let failed = d.send(.request(id: 1, cluster: "db@us", body: Self.q, timeoutMillis: 5000), from: skein)
        #expect(failed.frames(to: skein) == [.requestFailed(id: 1, reason: .networkUnreachable, detail: "no gateway to network us is reachable")])
        #expect(d.send(.request(id: 2, cluster: "db@us", body: Self.q, timeoutMillis: 5000), from: iris).effects.isEmpty)
        let tunnel = d.send(.tunnelInit(tunnelID: 3, cluster: "db@us", timeoutMillis: 5000), from: skein)
        #expect(tunnel.frames(to: skein) == [.tunnelFailed(tunnelID: 3, reason: .networkUnreachable, detail: "no gateway to network us is reachable")])
        // A gateway appears: the waiting Iris request leaves for it.
        let (g, appeared) = d.relay(5, gateways: ["us": usExports])
        #expect(appeared.peerFrames(to: g).count == 1)
    }

    @Test("a name the other network does not export: refused at the client's relay, distinctly")
    func notExported() {
        var d = CoreDriver(network: "eu")
        _ = d.relay(5, gateways: ["us": usExports])
        let skein = d.connect(dialect: .skein1)
        let iris = d.connect()
        let detail = "cache is not exported by network us for request"
        #expect(d.send(.request(id: 1, cluster: "cache@us", body: Self.q, timeoutMillis: 5000), from: skein).frames(to: skein)
            == [.requestFailed(id: 1, reason: .notExported, detail: detail)])
        #expect(d.send(.request(id: 1, cluster: "cache@us", body: Self.q, timeoutMillis: 5000), from: iris).frames(to: iris)
            == [.reply(id: 1, outcome: .fault("not exported: \(detail)"))])
        // db is exported for requests, not for broadcasts: a skein/1 broadcast is REFUSED.
        let broadcast = d.send(.broadcast(cluster: "db@us", message: Self.q), from: skein)
        #expect(broadcast.frames(to: skein) == [.refused(opcode: 0x03, name: "db@us", reason: .notExported, detail: "db is not exported by network us for broadcast")])
        #expect(broadcast.peerFrames.isEmpty)
        // A refused skein/1 subscription is not registered; an Iris one is.
        let subscribe = d.send(.subscribe(topic: "secret@us"), from: skein)
        #expect(subscribe.frames(to: skein).count == 1)
        #expect(d.core.topicSubscriptions["secret@us"] == nil)
        _ = d.send(.subscribe(topic: "secret@us"), from: iris)
        #expect(d.core.topicSubscriptions["secret@us"] == 1)
    }

    @Test("broadcasts and publishes take the designated gateway: the lowest node id of those advertising the network")
    func orderedPath() {
        var d = CoreDriver(network: "eu", node: 50)
        let (g7, _) = d.relay(7, gateways: ["us": usExports])
        let (g3, _) = d.relay(3, gateways: ["us": usExports])
        let client = d.connect()
        for i in 0..<5 {
            let sent = d.send(.publish(topic: "orders@us", event: ByteBuffer(string: "\(i)")), from: client)
            #expect(sent.peerFrames(to: g3) == [.publish(topic: "orders@us", body: ByteBuffer(string: "\(i)"))])
            #expect(sent.peerFrames(to: g7).isEmpty)
        }
        let broadcast = d.send(.broadcast(cluster: "workers@us", message: Self.q), from: client)
        #expect(broadcast.peerFrames(to: g3) == [.broadcast(cluster: "workers@us", body: Self.q)])
        // A publish to another network's topic never reaches this network's subscribers directly:
        // they get it back through that network, once.
        let subscriber = d.connect()
        _ = d.send(.subscribe(topic: "orders@us"), from: subscriber)
        #expect(d.send(.publish(topic: "orders@us", event: Self.q), from: client).frames(to: subscriber).isEmpty)
    }

    @Test("a flood's remembered route follows the network: per kind, and moved or ended by a gateway's loss")
    func rememberedRemoteRoute() {
        var d = CoreDriver(network: "eu", node: 50)
        let (g3, _) = d.relay(3, gateways: ["us": usExports])
        let (g7, _) = d.relay(7, gateways: ["us": usExports])
        let client = d.connect(dialect: .skein1)
        let event = ByteBuffer(string: "e")
        #expect(d.send(.publish(topic: "orders@us", event: event), from: client).peerFrames(to: g3) == [.publish(topic: "orders@us", body: event)])
        // The same name as a broadcast is another decision: us exports orders for publish only.
        let broadcast = d.send(.broadcast(cluster: "orders@us", message: event), from: client)
        #expect(broadcast.frames(to: client) == [.refused(opcode: 0x03, name: "orders@us", reason: .notExported, detail: "orders is not exported by network us for broadcast")])
        #expect(broadcast.peerFrames(to: g3).isEmpty)
        #expect(d.send(.publish(topic: "orders@us", event: event), from: client).peerFrames(to: g3) == [.publish(topic: "orders@us", body: event)])
        // The designated gateway goes: the next publish takes the other one.
        var actions: [RelayAction] = []
        d.core.relayUnavailable(g3, .dead, now: d.now, actions: &actions)
        let moved = d.send(.publish(topic: "orders@us", event: event), from: client)
        #expect(moved.peerFrames(to: g7) == [.publish(topic: "orders@us", body: event)])
        #expect(moved.peerFrames(to: g3).isEmpty)
        // The last one goes: network unreachable, said at once.
        d.core.relayUnavailable(g7, .dead, now: d.now, actions: &actions)
        let none = d.send(.publish(topic: "orders@us", event: event), from: client)
        #expect(none.frames(to: client) == [.refused(opcode: 0x08, name: "orders@us", reason: .networkUnreachable, detail: "no gateway to network us is reachable")])
    }

    @Test("events of another network's topic are accepted only from the designated gateway")
    func eventsFromDesignatedOnly() {
        var d = CoreDriver(network: "eu", node: 50)
        let news = ExportTable([ExportRule(kinds: [.subscribe, .publish], pattern: "news.*")])
        let (g3, _) = d.relay(3, gateways: ["us": news])
        let (g7, _) = d.relay(7, gateways: ["us": news])
        let subscriber = d.connect()
        _ = d.send(.subscribe(topic: "news.eu@us"), from: subscriber)
        let event = PeerFrame.event(topic: "news.eu@us", body: ByteBuffer(string: "flash"))
        #expect(d.peer(event, from: g3).frames(to: subscriber) == [.publish(topic: "news.eu@us", event: ByteBuffer(string: "flash"))])
        #expect(d.peer(event, from: g7).frames(to: subscriber).isEmpty, "a second gateway's copy would be a duplicate")
        // Route caches never confuse the two directions: a local publish to the same name after
        // events came in still goes to the other network, not straight to the subscriber here.
        let publisher = d.connect()
        for _ in 0..<3 {
            let sent = d.send(.publish(topic: "news.eu@us", event: Self.q), from: publisher)
            #expect(sent.peerFrames(to: g3) == [.publish(topic: "news.eu@us", body: Self.q)])
            #expect(sent.frames(to: subscriber).isEmpty)
            _ = d.peer(event, from: g3)
        }
        // And a local topic published between them stays local.
        _ = d.send(.subscribe(topic: "local"), from: subscriber)
        #expect(d.send(.publish(topic: "local", event: Self.q), from: publisher).frames(to: subscriber) == [.publish(topic: "local", event: Self.q)])
        #expect(d.send(.publish(topic: "news.eu@us", event: Self.q), from: publisher).peerFrames(to: g3).count == 1)
    }
}

@Suite("Relay core: federation, the gateway's side (network eu, linked to us)")
struct CoreFederationGatewayTests {
    static let q = ByteBuffer(string: "q")

    @Test("a relay's request for db@us goes over a gateway link with the bare name; the answer comes back")
    func relayed() {
        var d = CoreDriver(network: "eu")
        let (link, _) = d.link(1, network: "us", exports: usExports.rules)
        let r = testNode(40)
        let sent = d.peer(.request(id: 77, cluster: "db@us", remainingMillis: 900, flags: .failFast, body: Self.q), from: r)
        guard case .request(let key, "db", 900, .failFast, Self.q)? = sent.peerFrames(to: link).first else {
            Issue.record("\(sent)")
            return
        }
        let back = d.fromGateway(.reply(id: key, outcome: .success(ByteBuffer(string: "row"))), link)
        #expect(back.peerFrames(to: r) == [.reply(id: 77, outcome: .success(ByteBuffer(string: "row")))])
    }

    @Test("a gateway without links answers network unreachable, so the relay can choose another")
    func noLinks() {
        var d = CoreDriver(network: "eu")
        let r = testNode(40)
        let answer = d.peer(.request(id: 1, cluster: "db@us", remainingMillis: 900, flags: [], body: Self.q), from: r)
        #expect(answer.peerFrames(to: r) == [.reply(id: 1, outcome: .refused(.networkUnreachable, "no gateway to network us is reachable"))])
    }

    @Test("the client's relay tries the next gateway when one says network unreachable")
    func nextGateway() {
        var d = CoreDriver(network: "eu")
        let (g1, _) = d.relay(5, gateways: ["us": usExports])
        let (g2, _) = d.relay(6, gateways: ["us": usExports])
        let client = d.connect(dialect: .skein1)
        let sent = d.send(.request(id: 1, cluster: "db@us", body: Self.q, timeoutMillis: 5000), from: client)
        guard let (first, frame) = sent.peerFrames.first, case .request(let key, _, _, _, _) = frame else { Issue.record("\(sent)"); return }
        let other = first == g1 ? g2 : g1
        let retried = d.peer(.reply(id: key, outcome: .refused(.networkUnreachable, "down")), from: first)
        #expect(retried.peerFrames(to: other).count == 1)
        guard case .request(let key2, _, _, _, _)? = retried.peerFrames(to: other).first else { return }
        let last = d.peer(.reply(id: key2, outcome: .refused(.networkUnreachable, "down too")), from: other)
        #expect(last.frames(to: client) == [.requestFailed(id: 1, reason: .networkUnreachable, detail: "down too")])
    }

    @Test("the gateway advertises the networks it has links to, with their exports, and stops when the last link goes")
    func advertisement() {
        var d = CoreDriver(network: "eu")
        let before = d.core.directoryVersion
        let (a, _) = d.link(2, network: "us", exports: usExports.rules)
        let (b, _) = d.link(1, network: "us", exports: usExports.rules)
        #expect(d.core.gatewayAdvertisement == ["us": usExports.rules])
        #expect(d.core.directoryVersion != before)
        _ = d.unlink(a)
        #expect(d.core.gatewayAdvertisement == ["us": usExports.rules])
        let gone = d.unlink(b)
        #expect(d.core.gatewayAdvertisement.isEmpty)
        #expect(gone.reports.contains(.federationLinkChanged(network: "us", up: false)))
    }

    @Test("a link lost under a skein/1 request: member lost back to the relay that asked")
    func linkLost() {
        var d = CoreDriver(network: "eu")
        let (link, _) = d.link(1, network: "us", exports: usExports.rules)
        let r = testNode(40)
        _ = d.peer(.request(id: 3, cluster: "db@us", remainingMillis: 900, flags: .failFast, body: Self.q), from: r)
        let lost = d.unlink(link)
        #expect(lost.peerFrames(to: r) == [.reply(id: 3, outcome: .memberLost)])
    }

    @Test("interest: the designated gateway asks for every name@us subscribed in its network, on its designated link only")
    func interest() {
        var d = CoreDriver(network: "eu", node: 1)
        let (l2, _) = d.link(2, network: "us", exports: usExports.rules)
        let (l1, _) = d.link(1, network: "us", exports: usExports.rules)
        // A relay of eu subscribes to news.eu@us (and to secret@us, which us does not export).
        let (_, changed) = d.relay(30, topics: ["news.eu@us", "secret@us", "local"], gateways: [:])
        #expect(changed.peerFrames(to: l1) == [.interest(topics: ["news.eu"], patterns: [])])
        #expect(changed.peerFrames(to: l2).isEmpty)
        // A local subscriber too; unchanged sets are not resent.
        let s = d.connect()
        let more = d.send(.subscribe(topic: "news.us@us"), from: s)
        #expect(more.peerFrames(to: l1) == [.interest(topics: ["news.eu", "news.us"], patterns: [])])
        #expect(d.send(.subscribe(topic: "news.eu@us"), from: d.connect()).peerFrames.isEmpty)
        // The designated link goes: the other link takes the whole set.
        let moved = d.unlink(l1)
        #expect(moved.peerFrames(to: l2) == [.interest(topics: ["news.eu", "news.us"], patterns: [])])
        // Another gateway with a lower node id appears: this one is no longer designated.
        let (_, yielded) = d.relay(0, gateways: ["us": usExports])
        #expect(yielded.peerFrames(to: l2) == [.interest(topics: [], patterns: [])])
    }

    @Test("events from the designated link reach subscribers here and every relay with subscribers, as name@network")
    func events() {
        var d = CoreDriver(network: "eu", node: 1)
        let (l1, _) = d.link(1, network: "us", exports: usExports.rules)
        let (l2, _) = d.link(2, network: "us", exports: usExports.rules)
        let (r, _) = d.relay(30, topics: ["news.eu@us"], gateways: [:])
        let s = d.connect()
        _ = d.send(.subscribe(topic: "news.eu@us"), from: s)
        let event = d.fromGateway(.event(topic: "news.eu", body: ByteBuffer(string: "flash")), l1)
        #expect(event.frames(to: s) == [.publish(topic: "news.eu@us", event: ByteBuffer(string: "flash"))])
        #expect(event.peerFrames(to: r) == [.event(topic: "news.eu@us", body: ByteBuffer(string: "flash"))])
        #expect(d.fromGateway(.event(topic: "news.eu", body: ByteBuffer(string: "dup")), l2).frames(to: s).isEmpty)
    }

    @Test("a tunnel through the gateway: both hops get allowance, data flows within it, close travels on")
    func tunnelThrough() {
        var d = CoreDriver(network: "eu")
        let (link, _) = d.link(1, network: "us", exports: usExports.rules)
        let r = testNode(40)
        let open = d.peer(.tunnelOpen(id: 11, cluster: "db@us", remainingMillis: 2000, flags: []), from: r)
        guard case .tunnelOpen(let key, "db", _, _)? = open.peerFrames(to: link).first else { Issue.record("\(open)"); return }
        let built = d.fromGateway(.tunnelConfirm(id: key, outcome: .built(farID: 5, chunkLimit: 65536)), link)
        let buffer = d.core.settings.tunnelBuffer
        #expect(built.peerFrames(to: link) == [.tunnelAllowance(id: 5, bytes: buffer)])
        #expect(built.peerFrames(to: r) == [
            .tunnelConfirm(id: 11, outcome: .built(farID: key, chunkLimit: 65536)), .tunnelAllowance(id: 11, bytes: buffer),
        ])
        // Data from the relay goes on only once the far side granted allowance.
        let chunk = ByteBuffer(repeating: 1, count: 1000)
        #expect(d.peer(.tunnelData(id: key, sizeOrContinuation: 1000, chunk: chunk), from: r).peerFrames(to: link).isEmpty)
        let allowed = d.fromGateway(.tunnelAllowance(id: key, bytes: 65536), link)
        #expect(allowed.peerFrames(to: link) == [.tunnelData(id: 5, sizeOrContinuation: 1000, chunk: chunk)])
        #expect(allowed.peerFrames(to: r) == [.tunnelAllowance(id: 11, bytes: 1000)], "allowance returns to the relay as its data leaves")
        // The far network's gateway dies: the relay's end fails with a reason.
        let lost = d.unlink(link)
        #expect(lost.peerFrames(to: r) == [.tunnelClose(id: 11, reason: "the relay at the other end was lost")])
    }
}

@Suite("Relay core: federation, the exporting side (network us, linked to eu)")
struct CoreFederationExportTests {
    static let q = ByteBuffer(string: "q")
    static var core: CoreDriver { CoreDriver(network: "us", exports: ["eu": usExports], node: 1) }

    @Test("an exported request from eu is served here; its answer goes back over the link")
    func exportedRequest() {
        var d = Self.core
        let member = d.connect(cluster: "db")
        let (g, _) = d.link(1, network: "eu")
        let handed = d.fromGateway(.request(id: 4, cluster: "db", remainingMillis: 800, flags: [], body: Self.q), g)
        guard case .request(let memberID, Self.q, 800)? = handed.frames(to: member).first else { Issue.record("\(handed)"); return }
        let answer = d.send(.reply(id: memberID, outcome: .success(ByteBuffer(string: "row"))), from: member)
        #expect(answer.peerFrames(to: g) == [.reply(id: 4, outcome: .success(ByteBuffer(string: "row")))])
    }

    @Test("what is not exported is refused, logged and counted, whatever the other side claims")
    func refused() {
        var d = Self.core
        _ = d.connect(cluster: "cache")
        let (g, _) = d.link(1, network: "eu")
        let answer = d.fromGateway(.request(id: 4, cluster: "cache", remainingMillis: 800, flags: [], body: Self.q), g)
        #expect(answer.peerFrames(to: g) == [.reply(id: 4, outcome: .refused(.notExported, "cluster cache is not exported by network us to eu"))])
        #expect(answer.reports.contains(.federationRefused(network: "eu", kind: .request, name: "cache")))
        // No transit to a third network, even for an exported pattern.
        let transit = d.fromGateway(.request(id: 5, cluster: "db@asia", remainingMillis: 800, flags: [], body: Self.q), g)
        guard case .reply(5, .refused(.notExported, _))? = transit.peerFrames(to: g).first else { Issue.record("\(transit)"); return }
        // Broadcasts to workers are exported; to db they are not.
        let w = d.connect(cluster: "workers")
        #expect(d.fromGateway(.broadcast(cluster: "workers", body: Self.q), g).frames(to: w) == [.broadcast(message: Self.q)])
        let db = d.connect(cluster: "db")
        let nope = d.fromGateway(.broadcast(cluster: "db", body: Self.q), g)
        #expect(nope.frames(to: db).isEmpty && nope.reports.contains(.federationRefused(network: "eu", kind: .broadcast, name: "db")))
        let tunnel = d.fromGateway(.tunnelOpen(id: 9, cluster: "workers", remainingMillis: 800, flags: []), g)
        guard case .tunnelConfirm(9, .refused(.notExported, _))? = tunnel.peerFrames(to: g).first else { Issue.record("\(tunnel)"); return }
    }

    @Test("a request from eu routes inside us like a local one: to another relay, waiting or failing fast as asked")
    func routesInside() {
        var d = Self.core
        let (g, _) = d.link(1, network: "eu")
        let fast = d.fromGateway(.request(id: 1, cluster: "db", remainingMillis: 800, flags: .failFast, body: Self.q), g)
        #expect(fast.peerFrames(to: g) == [.reply(id: 1, outcome: .noMembers)])
        #expect(d.fromGateway(.request(id: 2, cluster: "db", remainingMillis: 800, flags: [], body: Self.q), g).effects.isEmpty)
        let (b, joined) = d.relay(20, clusters: ["db": 1], gateways: [:])
        guard case .request(let key, "db", _, [], Self.q)? = joined.peerFrames(to: b).first else { Issue.record("\(joined)"); return }
        let back = d.peer(.reply(id: key, outcome: .success(Self.q)), from: b)
        #expect(back.peerFrames(to: g) == [.reply(id: 2, outcome: .success(Self.q))])
    }

    @Test("interest from eu subscribes here on its behalf: local and relayed publishes reach it once, as events")
    func interest() {
        var d = Self.core
        let (g, _) = d.link(1, network: "eu")
        let before = d.core.directoryVersion
        let registered = d.fromGateway(.interest(topics: ["news.eu", "secret"], patterns: []), g)
        #expect(registered.reports.contains(.federationRefused(network: "eu", kind: .subscribe, name: "secret")))
        #expect(d.core.topicSubscriptions["news.eu"] == 1, "advertised, so relays of us send its publishes here")
        #expect(d.core.topicSubscriptions["secret"] == nil)
        #expect(d.core.directoryVersion != before)
        let publisher = d.connect()
        let local = d.send(.publish(topic: "news.eu", event: ByteBuffer(string: "1")), from: publisher)
        #expect(local.peerFrames(to: g) == [.event(topic: "news.eu", body: ByteBuffer(string: "1"))])
        let relayed = d.peer(.publish(topic: "news.eu", body: ByteBuffer(string: "2")), from: testNode(20))
        #expect(relayed.peerFrames(to: g) == [.event(topic: "news.eu", body: ByteBuffer(string: "2"))])
        // Publishing into us from eu: only exported topics, and eu's own interest gets it back.
        let sub = d.connect()
        _ = d.send(.subscribe(topic: "orders"), from: sub)
        _ = d.fromGateway(.interest(topics: ["news.eu"], patterns: []), g)
        let order = d.fromGateway(.publish(topic: "orders", body: ByteBuffer(string: "o")), g)
        #expect(order.frames(to: sub) == [.publish(topic: "orders", event: ByteBuffer(string: "o"))])
        #expect(d.fromGateway(.publish(topic: "news.eu", body: Self.q), g).reports.contains(.federationRefused(network: "eu", kind: .publish, name: "news.eu")))
    }
}
