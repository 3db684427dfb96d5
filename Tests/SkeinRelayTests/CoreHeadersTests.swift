import NIOCore
import SkeinFederation
import SkeinRouting
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

/// `skein/2` headers in the relay core (Docs/skein-2.md, "Headers"): skein/2 receivers get them,
/// older receivers the body unchanged; they cross relays and gateways inside HEADERS.
@Suite("Relay core: headers (skein/2)")
struct CoreHeadersTests {
    static let e = ByteBuffer(string: "e")
    static let h = [Header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), Header("k", "v")]

    @Test("HPUBLISH: EVENT with the headers to skein/2 subscriptions, literal or pattern; PUBLISH to older ones")
    func publish() {
        var d = CoreDriver()
        let modern = d.connect(dialect: .skein2)
        let pattern = d.connect(dialect: .skein2)
        let skein1 = d.connect(dialect: .skein1)
        let iris = d.connect()
        for c in [modern, skein1, iris] { _ = d.send(.subscribe(topic: "t.x"), from: c) }
        _ = d.send(.subscribe(topic: "t.*"), from: pattern)
        let out = d.send(.hpublish(topic: "t.x", headers: Self.h, event: Self.e), from: d.connect(dialect: .skein2))
        #expect(out.frames(to: modern) == [.event(subscription: "t.x", topic: "t.x", headers: Self.h, event: Self.e)])
        #expect(out.frames(to: pattern) == [.event(subscription: "t.*", topic: "t.x", headers: Self.h, event: Self.e)])
        #expect(out.frames(to: skein1) == [.publish(topic: "t.x", event: Self.e)])
        #expect(out.frames(to: iris) == [.publish(topic: "t.x", event: Self.e)])
        // Without headers, a literal subscription gets PUBLISH as before.
        let plain = d.send(.hpublish(topic: "t.x", headers: [], event: Self.e), from: d.connect(dialect: .skein2))
        #expect(plain.frames(to: modern) == [.publish(topic: "t.x", event: Self.e)])
        // A wildcard in an HPUBLISH is refused like one in a PUBLISH.
        let c = d.connect(dialect: .skein2)
        guard case .refused(0x08, "t.*", .invalidName, _)? = d.send(.hpublish(topic: "t.*", headers: Self.h, event: Self.e), from: c).frames(to: c).first
        else { Issue.record("not refused"); return }
    }

    @Test("HBROADCAST: HBROADCAST to skein/2 members, BROADCAST to older ones")
    func broadcast() {
        var d = CoreDriver()
        let modern = d.connect(cluster: "all", dialect: .skein2)
        let iris = d.connect(cluster: "all")
        let out = d.send(.hbroadcast(cluster: "all", headers: Self.h, message: Self.e), from: d.connect(dialect: .skein2))
        #expect(out.frames(to: modern) == [.hbroadcast(headers: Self.h, message: Self.e)])
        #expect(out.frames(to: iris) == [.broadcast(message: Self.e)])
    }

    @Test("HREQUEST and HREPLY: a skein/2 member gets the headers and its reply's come back; an Iris member gets the body")
    func requestReply() throws {
        var d = CoreDriver()
        let member = d.connect(cluster: "svc", dialect: .skein2)
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.hrequest(id: 5, cluster: "svc", headers: Self.h, body: Self.e, timeoutMillis: 1000), from: caller)
        guard case .hrequest(let memberID, Self.h, Self.e, _)? = asked.frames(to: member).first else {
            Issue.record("\(asked)")
            return
        }
        let back = [Header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01")]
        let answered = d.send(.hreply(id: memberID, headers: back, outcome: .success(Self.e)), from: member)
        #expect(answered.frames(to: caller) == [.hreply(id: 5, headers: back, outcome: .success(Self.e))])
        // An Iris member: REQUEST with the body; its REPLY reaches the caller as REPLY.
        var e = CoreDriver()
        let irisMember = e.connect(cluster: "svc")
        let modernCaller = e.connect(dialect: .skein2)
        let plain = e.send(.hrequest(id: 6, cluster: "svc", headers: Self.h, body: Self.e, timeoutMillis: 1000), from: modernCaller)
        guard case .request(let irisID, Self.e, _)? = plain.frames(to: irisMember).first else {
            Issue.record("\(plain)")
            return
        }
        let reply = e.send(.reply(id: irisID, outcome: .success(Self.e)), from: irisMember)
        #expect(reply.frames(to: modernCaller) == [.reply(id: 6, outcome: .success(Self.e))])
        // A skein/1 caller gets REPLY even when the member's reply had headers.
        var f = CoreDriver()
        let m = f.connect(cluster: "svc", dialect: .skein2)
        let old = f.connect(dialect: .skein1)
        let req = f.send(.request(id: 1, cluster: "svc", body: Self.e, timeoutMillis: 1000), from: old)
        guard case .request(let id, _, _)? = req.frames(to: m).first else { Issue.record("\(req)"); return }
        #expect(f.send(.hreply(id: id, headers: back, outcome: .success(Self.e)), from: m).frames(to: old) == [.reply(id: 1, outcome: .success(Self.e))])
    }

    @Test("an H-frame from a connection that did not negotiate skein/2 is a protocol violation", arguments: [ProtocolDialect.iris, .skein1])
    func notNegotiated(_ dialect: ProtocolDialect) {
        var d = CoreDriver()
        let c = d.connect(dialect: dialect)
        let witness = d.connect(dialect: .skein2)
        _ = d.send(.subscribe(topic: "t"), from: witness)
        let out = d.send(.hpublish(topic: "t", headers: Self.h, event: Self.e), from: c)
        #expect(out.disconnected == [c] && out.frames(to: witness).isEmpty)
    }

    @Test("across relays: headers travel inside HEADERS, and come back with the reply")
    func mesh() {
        var d = CoreDriver()
        let (r, _) = d.relay(2, clusters: ["svc": 1], topics: ["t"])
        let publisher = d.connect(dialect: .skein2)
        let published = d.send(.hpublish(topic: "t", headers: Self.h, event: Self.e), from: publisher)
        #expect(published.peerFrames(to: r) == [.headed(headers: Self.h, frame: .publish(topic: "t", body: Self.e))])
        let broadcast = d.send(.hbroadcast(cluster: "svc", headers: Self.h, message: Self.e), from: publisher)
        #expect(broadcast.peerFrames(to: r) == [.headed(headers: Self.h, frame: .broadcast(cluster: "svc", body: Self.e))])
        let asked = d.send(.hrequest(id: 9, cluster: "svc", headers: Self.h, body: Self.e, timeoutMillis: 1000), from: publisher)
        guard case .headed(Self.h, .request(let key, "svc", _, _, Self.e))? = asked.peerFrames(to: r).first else {
            Issue.record("\(asked)")
            return
        }
        let back = [Header("k", "back")]
        let answered = d.peer(.headed(headers: back, frame: .reply(id: key, outcome: .success(Self.e))), from: r)
        #expect(answered.frames(to: publisher) == [.hreply(id: 9, headers: back, outcome: .success(Self.e))])
        // Inbound: a member and a subscriber here get what another relay sent with headers.
        let member = d.connect(cluster: "svc", dialect: .skein2)
        let subscriber = d.connect(dialect: .skein2)
        _ = d.send(.subscribe(topic: "t"), from: subscriber)
        let event = d.peer(.headed(headers: Self.h, frame: .publish(topic: "t", body: Self.e)), from: r)
        #expect(event.frames(to: subscriber) == [.event(subscription: "t", topic: "t", headers: Self.h, event: Self.e)])
        let cast = d.peer(.headed(headers: Self.h, frame: .broadcast(cluster: "svc", body: Self.e)), from: r)
        #expect(cast.frames(to: member) == [.hbroadcast(headers: Self.h, message: Self.e)])
        let request = d.peer(.headed(headers: Self.h, frame: .request(id: 1, cluster: "svc", remainingMillis: 500, flags: [], body: Self.e)), from: r)
        guard case .hrequest(let memberID, Self.h, Self.e, _)? = request.frames(to: member).first else {
            Issue.record("\(request)")
            return
        }
        let reply = d.send(.hreply(id: memberID, headers: back, outcome: .fault("no")), from: member)
        #expect(reply.peerFrames(to: r) == [.headed(headers: back, frame: .reply(id: 1, outcome: .fault("no")))])
    }

    @Test("across a federation: an event with headers crosses the gateway link with them")
    func federation() {
        var us = CoreDriver(network: "us", exports: ["eu": usExports], node: 1)
        let (g, _) = us.link(1, network: "eu")
        _ = us.fromGateway(.interest(topics: ["news.eu"], patterns: []), g)
        let out = us.send(.hpublish(topic: "news.eu", headers: Self.h, event: Self.e), from: us.connect(dialect: .skein2))
        #expect(out.peerFrames(to: g) == [.headed(headers: Self.h, frame: .event(topic: "news.eu", body: Self.e))])
        var eu = CoreDriver(network: "eu", node: 1)
        let (l1, _) = eu.link(1, network: "us", exports: usExports.rules)
        let s = eu.connect(dialect: .skein2)
        _ = eu.send(.subscribe(topic: "news.eu@us"), from: s)
        let event = eu.fromGateway(.headed(headers: Self.h, frame: .event(topic: "news.eu", body: Self.e)), l1)
        #expect(event.frames(to: s) == [.event(subscription: "news.eu@us", topic: "news.eu@us", headers: Self.h, event: Self.e)])
    }
}
