import NIOCore
import SkeinFederation
import SkeinRouting
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

/// `skein/2` wildcard subscriptions in the relay core (Docs/skein-2.md, "Wildcard topics"): on
/// one relay, across relays, and across a federation.
@Suite("Relay core: wildcard topics (skein/2)")
struct CoreWildcardTests {
    static let e = ByteBuffer(string: "e")

    @Test("a pattern gets EVENT naming itself and the topic; a literal beside it gets PUBLISH; an Iris a.* is a topic")
    func local() {
        var d = CoreDriver()
        let pattern = d.connect(dialect: .skein2)
        let literal = d.connect(dialect: .skein2)
        let iris = d.connect()
        let publisher = d.connect()
        _ = d.send(.subscribe(topic: "orders.*"), from: pattern)
        _ = d.send(.subscribe(topic: "orders.>"), from: pattern)
        _ = d.send(.subscribe(topic: "orders.eu"), from: literal)
        _ = d.send(.subscribe(topic: "orders.*"), from: iris)
        let eu = d.send(.publish(topic: "orders.eu", event: Self.e), from: publisher)
        #expect(eu.frames(to: pattern) == [
            .event(subscription: "orders.*", topic: "orders.eu", headers: [], event: Self.e),
            .event(subscription: "orders.>", topic: "orders.eu", headers: [], event: Self.e),
        ])
        #expect(eu.frames(to: literal) == [.publish(topic: "orders.eu", event: Self.e)])
        #expect(eu.frames(to: iris).isEmpty, "the Iris subscription is to the topic named orders.*")
        let deep = d.send(.publish(topic: "orders.eu.paid", event: Self.e), from: publisher)
        #expect(deep.frames(to: pattern) == [.event(subscription: "orders.>", topic: "orders.eu.paid", headers: [], event: Self.e)])
        // The Iris client's literal publish reaches its own topic and the patterns matching its tokens.
        let star = d.send(.publish(topic: "orders.*", event: Self.e), from: iris)
        #expect(star.frames(to: iris) == [.publish(topic: "orders.*", event: Self.e)])
        #expect(star.frames(to: pattern).count == 2)
        #expect(d.core.patternSubscriptions == ["orders.*": 1, "orders.>": 1])
        #expect(d.core.topicSubscriptions == ["orders.eu": 1, "orders.*": 1])
        // Unsubscribing names the pattern as it was subscribed.
        _ = d.send(.unsubscribe(topic: "orders.*"), from: pattern)
        let after = d.send(.publish(topic: "orders.eu", event: Self.e), from: publisher)
        #expect(after.frames(to: pattern) == [.event(subscription: "orders.>", topic: "orders.eu", headers: [], event: Self.e)])
        #expect(d.send(.unsubscribe(topic: "orders.*"), from: pattern).disconnected == [pattern], "not subscribed: a violation, as for topics")
    }

    @Test("an invalid pattern and a wildcard publish are refused with invalid name, and change nothing", arguments: ["a..*", ".a.*", "a.>.b", "*.", ">.>"])
    func invalid(_ bad: String) {
        var d = CoreDriver()
        let c = d.connect(dialect: .skein2)
        let refused = d.send(.subscribe(topic: bad), from: c)
        guard case .refused(0x06, bad, .invalidName, _)? = refused.frames(to: c).first else {
            Issue.record("\(refused)")
            return
        }
        #expect(d.core.patternSubscriptions.isEmpty && d.core.topicSubscriptions.isEmpty && refused.disconnected.isEmpty)
        let (r, _) = d.relay(2, topics: ["a.x"])
        let wild = d.send(.publish(topic: "a.*", event: Self.e), from: c)
        guard case .refused(0x08, "a.*", .invalidName, _)? = wild.frames(to: c).first else {
            Issue.record("\(wild)")
            return
        }
        #expect(wild.peerFrames(to: r).isEmpty)
        // The same from an Iris client is a topic of that name.
        #expect(d.send(.publish(topic: "a.*", event: Self.e), from: d.connect()).frames(to: c).isEmpty)
    }

    @Test("across relays: patterns are advertised, a publish goes only to relays with a match, once each")
    func mesh() {
        var ignored: [RelayAction] = []
        var d = CoreDriver()
        let (wide, _) = d.relay(2, topics: ["orders.eu"])
        let (narrow, _) = d.relay(3, topics: [])
        d.core.relayUpdated(
            RemoteRelay(id: wide, name: "r2", zone: "", clusters: [:], topics: ["orders.eu"], load: 0, patterns: ["orders.*", ">"]),
            now: d.now, actions: &ignored)
        d.core.relayUpdated(
            RemoteRelay(id: narrow, name: "r3", zone: "", clusters: [:], topics: [], load: 0, patterns: ["metrics.>"]),
            now: d.now, actions: &ignored)
        let publisher = d.connect()
        let eu = d.send(.publish(topic: "orders.eu", event: Self.e), from: publisher)
        #expect(eu.peerFrames(to: wide) == [.publish(topic: "orders.eu", body: Self.e)], "literal and two patterns match: one copy")
        #expect(eu.peerFrames(to: narrow).isEmpty)
        let cpu = d.send(.publish(topic: "metrics.cpu.user", event: Self.e), from: publisher)
        #expect(cpu.peerFrames(to: narrow) == [.publish(topic: "metrics.cpu.user", body: Self.e)])
        #expect(cpu.peerFrames(to: wide) == [.publish(topic: "metrics.cpu.user", body: Self.e)], "`>` matches everything")
        // A suspended relay still gets events for its patterns.
        d.core.relayUnavailable(narrow, .linkBroken, now: d.now, actions: &ignored)
        let again = d.send(.publish(topic: "metrics.mem", event: Self.e), from: publisher)
        #expect(again.peerFrames(to: narrow) == [.publish(topic: "metrics.mem", body: Self.e)])
        // A publish from another relay reaches this relay's patterns.
        let sub = d.connect(dialect: .skein2)
        _ = d.send(.subscribe(topic: "metrics.*"), from: sub)
        #expect(d.core.advertisedPatterns == ["metrics.*"])
        let inbound = d.peer(.publish(topic: "metrics.disk", body: Self.e), from: wide)
        #expect(inbound.frames(to: sub) == [.event(subscription: "metrics.*", topic: "metrics.disk", headers: [], event: Self.e)])
        // Closing the subscriber forgets its pattern.
        _ = d.lose(sub)
        #expect(d.core.advertisedPatterns.isEmpty)
    }

    @Test("federation, subscriber's side: a pattern@us is asked of us's designated link, and its events come back as EVENT")
    func federationOrigin() {
        var ignored: [RelayAction] = []
        var d = CoreDriver(network: "eu", node: 1)
        let (l1, _) = d.link(1, network: "us", exports: usExports.rules)
        let s = d.connect(dialect: .skein2)
        let asked = d.send(.subscribe(topic: "news.*@us"), from: s)
        #expect(asked.peerFrames(to: l1) == [.interest(topics: [], patterns: ["news.*"])])
        #expect(asked.frames(to: s).isEmpty, "a pattern is not refused for the exports: each event is checked at us")
        // Another relay of eu with a pattern of us's topics.
        let (r, _) = d.relay(30, topics: [], gateways: [:])
        d.core.relayUpdated(
            RemoteRelay(id: r, name: "r30", zone: "", clusters: [:], topics: [], load: 0, patterns: ["news.>@us"]),
            now: d.now, actions: &ignored)
        let event = d.fromGateway(.event(topic: "news.eu", body: Self.e), l1)
        #expect(event.frames(to: s) == [.event(subscription: "news.*@us", topic: "news.eu@us", headers: [], event: Self.e)])
        #expect(event.peerFrames(to: r) == [.event(topic: "news.eu@us", body: Self.e)])
        // The other relay delivers what the designated gateway relays to its patterns too.
        var other = CoreDriver(network: "eu", node: 30)
        let (gatewayRelay, _) = other.relay(1, topics: [], gateways: ["us": usExports])
        let sub = other.connect(dialect: .skein2)
        _ = other.send(.subscribe(topic: "news.>@us"), from: sub)
        let relayed = other.peer(.event(topic: "news.eu.x@us", body: Self.e), from: gatewayRelay)
        #expect(relayed.frames(to: sub) == [.event(subscription: "news.>@us", topic: "news.eu.x@us", headers: [], event: Self.e)])
        // A local topic does not match another network's pattern.
        #expect(other.send(.publish(topic: "news.eu", event: Self.e), from: other.connect()).frames(to: sub).isEmpty)
    }

    @Test("federation, exporter's side: a pattern from eu gets only the matching topics us exports, unlogged per event")
    func federationExporter() {
        var d = CoreDriver(network: "us", exports: ["eu": usExports], node: 1)
        let (g, _) = d.link(1, network: "eu")
        _ = d.fromGateway(.interest(topics: [], patterns: [">", "a..b"]), g)
        #expect(d.core.advertisedPatterns == [">"], "an invalid pattern is dropped; the valid one advertised to us's relays")
        let publisher = d.connect()
        let news = d.send(.publish(topic: "news.eu", event: Self.e), from: publisher)
        #expect(news.peerFrames(to: g) == [.event(topic: "news.eu", body: Self.e)])
        let secret = d.send(.publish(topic: "secret", event: Self.e), from: publisher)
        #expect(secret.peerFrames(to: g).isEmpty, "us does not export secret for subscribe")
        #expect(secret.reports.isEmpty, "a pattern's unexported topics are not reported event by event")
        let relayed = d.peer(.publish(topic: "news.us", body: Self.e), from: testNode(20))
        #expect(relayed.peerFrames(to: g) == [.event(topic: "news.us", body: Self.e)])
        // A literal and a pattern both matching: one event.
        _ = d.fromGateway(.interest(topics: ["news.eu"], patterns: ["news.*"]), g)
        #expect(d.send(.publish(topic: "news.eu", event: Self.e), from: publisher).peerFrames(to: g).count == 1)
        // The link goes: its patterns go with it.
        _ = d.unlink(g)
        #expect(d.core.advertisedPatterns.isEmpty)
    }
}
