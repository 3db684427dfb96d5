import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinTestSupport
import SkeinWire
import Testing

@testable import SkeinRelay

/// Flow control across relays (Docs/mesh.md, "Flow control"): a blocked receiver here holds the
/// relays that feed it; a hold from another relay pauses the senders here that feed it.
@Suite("Relay core: flow control across relays")
struct CoreFlowControlTests {
    static let event = ByteBuffer(repeating: 7, count: 100)
    static let news = PeerFlowStream.publish(topic: "news")

    @Test("a blocked subscriber holds each relay that feeds it, once, refreshes the hold, and releases it when writable")
    func receiverAsks() {
        var d = CoreDriver { $0.holdLease = .seconds(1) }
        let (b, _) = d.relay(1)
        let (c, _) = d.relay(2)
        let slow = d.connect()
        _ = d.send(.subscribe(topic: "news"), from: slow)
        // Writable: nothing is held.
        #expect(d.peer(.publish(topic: "news", body: Self.event), from: b).peerFrames.isEmpty)
        _ = d.writability(slow, false)
        let first = d.peer(.publish(topic: "news", body: Self.event), from: b)
        #expect(first.frames(to: slow) == [.publish(topic: "news", event: Self.event)])  // never dropped
        #expect(first.peerFrames(to: b) == [.hold(stream: Self.news, leaseMillis: 1000)])
        #expect(d.peer(.publish(topic: "news", body: Self.event), from: b).peerFrames.isEmpty)  // once
        #expect(d.peer(.publish(topic: "news", body: Self.event), from: c).peerFrames(to: c) == [.hold(stream: Self.news, leaseMillis: 1000)])
        // Every half lease while blocked, the holds go out again.
        let refresh = d.advance(.milliseconds(500))
        #expect(refresh.peerFrames(to: b) == [.hold(stream: Self.news, leaseMillis: 1000)])
        #expect(refresh.peerFrames(to: c) == [.hold(stream: Self.news, leaseMillis: 1000)])
        // Writable again: both released, and the refresh stops.
        let drained = d.writability(slow, true)
        #expect(drained.peerFrames(to: b) == [.release(stream: Self.news)])
        #expect(drained.peerFrames(to: c) == [.release(stream: Self.news)])
        #expect(d.advance(.seconds(2)).peerFrames.isEmpty)
        #expect(!d.core.holds.hasAsked)
    }

    @Test("a receiver the relay closes (slow consumer) releases its holds at once, not when its socket goes")
    func closedReceiverReleases() {
        var d = CoreDriver { $0.slowConsumerTimeout = .seconds(2) }
        let (b, _) = d.relay(1)
        let stuck = d.connect()
        _ = d.send(.subscribe(topic: "news"), from: stuck)
        _ = d.writability(stuck, false)
        #expect(d.peer(.publish(topic: "news", body: Self.event), from: b).peerFrames(to: b).count == 1)
        let closed = d.advance(.seconds(2))
        #expect(closed.reports.contains(.slowConsumer(stuck, reason: "slow consumer: output blocked for more than 2000 ms")))
        #expect(closed.peerFrames(to: b).contains(.release(stream: Self.news)))
        #expect(!d.core.holds.hasAsked)
        #expect(d.advance(.seconds(2)).peerFrames.isEmpty, "no refresh for a closed receiver")
    }

    @Test("a receiver that flaps between blocked and writable keeps one refresh, not one per flap")
    func flappingKeepsOneRefresh() {
        var d = CoreDriver { $0.holdLease = .seconds(1) }
        let (b, _) = d.relay(1)
        let flappy = d.connect()
        _ = d.send(.subscribe(topic: "news"), from: flappy)
        for _ in 0..<5 {
            _ = d.writability(flappy, false)
            _ = d.peer(.publish(topic: "news", body: Self.event), from: b)
            _ = d.writability(flappy, true)
            _ = d.advance(.milliseconds(50))
        }
        _ = d.writability(flappy, false)
        _ = d.peer(.publish(topic: "news", body: Self.event), from: b)
        for _ in 0..<4 {
            let refresh = d.advance(.milliseconds(500))
            #expect(refresh.peerFrames(to: b) == [.hold(stream: Self.news, leaseMillis: 1000)])
        }
    }

    @Test("a hold stays while any receiver it serves is blocked; a receiver that closes releases its share")
    func sharedHolds() {
        var d = CoreDriver()
        let (b, _) = d.relay(1)
        let one = d.connect()
        let two = d.connect(cluster: "all")
        _ = d.send(.subscribe(topic: "news"), from: one)
        _ = d.send(.subscribe(topic: "news"), from: two)
        _ = d.writability(one, false)
        _ = d.writability(two, false)
        #expect(d.peer(.publish(topic: "news", body: Self.event), from: b).peerFrames(to: b).count == 1)
        // Broadcasts are held by cluster, apart from events.
        #expect(
            d.peer(.broadcast(cluster: "all", body: Self.event), from: b).peerFrames(to: b) == [
                .hold(stream: .broadcast(cluster: "all"), leaseMillis: 1000)
            ])
        #expect(d.writability(one, true).peerFrames.isEmpty)  // `two` still needs the topic's hold
        let gone = d.lose(two)
        let released = gone.peerFrames(to: b)
        #expect(released.count == 2 && released.contains(.release(stream: Self.news)) && released.contains(.release(stream: .broadcast(cluster: "all"))))
        #expect(!d.core.holds.hasAsked)
    }

    @Test("a hold from another relay pauses each local publisher of that stream to it after its event, and nobody else")
    func senderPauses() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, topics: ["news", "sport"])
        let (c, _) = d.relay(2, topics: ["news"])
        let publisher = d.connect()
        let other = d.connect()
        #expect(d.peer(.hold(stream: Self.news, leaseMillis: 1000), from: b).isEmpty)
        let sent = d.send(.publish(topic: "news", event: Self.event), from: publisher)
        // Not lost: it goes to both relays; then its publisher waits.
        #expect(sent.peerFrames(to: b) == [.publish(topic: "news", body: Self.event)])
        #expect(sent.peerFrames(to: c) == [.publish(topic: "news", body: Self.event)])
        #expect(sent.contains(.pauseReading(publisher)))
        // Another topic to the same relay keeps its speed.
        #expect(!d.send(.publish(topic: "sport", event: Self.event), from: other).contains(.pauseReading(other)))
        // RELEASE: it reads again.
        #expect(d.peer(.release(stream: Self.news), from: b) == [.resumeReading(publisher)])
        #expect(!d.send(.publish(topic: "news", event: Self.event), from: publisher).contains(.pauseReading(publisher)))
    }

    @Test("a hold ends with its lease unless refreshed; a lost relay holds nobody back")
    func leases() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["all": 1])
        let sender = d.connect()
        _ = d.peer(.hold(stream: .broadcast(cluster: "all"), leaseMillis: 1000), from: b)
        #expect(d.send(.broadcast(cluster: "all", message: Self.event), from: sender).contains(.pauseReading(sender)))
        _ = d.advance(.milliseconds(600))
        _ = d.peer(.hold(stream: .broadcast(cluster: "all"), leaseMillis: 1000), from: b)  // refreshed: ends at 1.6 s
        #expect(d.advance(.milliseconds(500)).isEmpty)  // the first lease's end does nothing
        #expect(d.advance(.milliseconds(500)) == [.resumeReading(sender)])
        // A lease longer than the bound is cut to it.
        _ = d.peer(.hold(stream: .broadcast(cluster: "all"), leaseMillis: .max), from: b)
        _ = d.send(.broadcast(cluster: "all", message: Self.event), from: sender)
        #expect(d.removeRelay(b).contains(.resumeReading(sender)))
        #expect(!d.core.holds.hasGrants)
    }

    @Test("a paused publisher stays paused until every hold and full output that pauses it ends")
    func severalReasons() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, topics: ["news"])
        let (c, _) = d.relay(2, topics: ["news"])
        let publisher = d.connect()
        _ = d.peer(.hold(stream: Self.news, leaseMillis: 5000), from: b)
        _ = d.peer(.hold(stream: Self.news, leaseMillis: 5000), from: c)
        let sent = d.send(.publish(topic: "news", event: Self.event), from: publisher)
        #expect(sent.filter { $0 == .pauseReading(publisher) }.count == 1)
        #expect(d.peer(.release(stream: Self.news), from: b).isEmpty)
        #expect(d.peer(.release(stream: Self.news), from: c) == [.resumeReading(publisher)])
        // A publisher that closes while held leaves nothing behind.
        _ = d.peer(.hold(stream: Self.news, leaseMillis: 5000), from: b)
        _ = d.send(.publish(topic: "news", event: Self.event), from: publisher)
        _ = d.lose(publisher)
        #expect(d.peer(.release(stream: Self.news), from: b).isEmpty)
    }

    @Test("a HOLD past the per-relay bound is ignored and reported; the relay's other holds stand")
    func tooManyHolds() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, topics: ["news"])
        let publisher = d.connect()
        _ = d.peer(.hold(stream: Self.news, leaseMillis: 5000), from: b)
        for i in 1..<FlowHolds.maxGrantsPerRelay { _ = d.peer(.hold(stream: .publish(topic: "t\(i)"), leaseMillis: 5000), from: b) }
        #expect(d.peer(.hold(stream: .publish(topic: "past"), leaseMillis: 5000), from: b).reports == [.holdsRefused(b)])
        #expect(d.send(.publish(topic: "news", event: Self.event), from: publisher).contains(.pauseReading(publisher)))
    }

    @Test("a hold from a relay that is not sending leaves every sender alone; a stale release does nothing")
    func strayFrames() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, topics: ["news"])
        let publisher = d.connect()
        #expect(d.peer(.release(stream: Self.news), from: b).isEmpty)
        _ = d.peer(.hold(stream: .publish(topic: "elsewhere"), leaseMillis: 1000), from: b)
        #expect(!d.send(.publish(topic: "news", event: Self.event), from: publisher).contains(.pauseReading(publisher)))
        #expect(d.advance(.seconds(1)).isEmpty)
        #expect(!d.core.holds.hasGrants)
    }
}

@Suite("FlowHolds")
struct FlowHoldsTests {
    let b = testNode(1)
    let c = testNode(2)

    @Test("asks once per relay and stream; releases when the last receiver is done")
    func asking() {
        var holds = FlowHolds()
        let key = HoldKey(relay: b, stream: .publish(topic: "t"))
        let asks = [holds.ask(key, for: ConnectionID(1)), holds.ask(key, for: ConnectionID(1)), holds.ask(key, for: ConnectionID(2))]
        #expect(asks == [true, false, false])
        #expect(holds.receiverDone(ConnectionID(1)).isEmpty)
        #expect(holds.receiverDone(ConnectionID(2)) == [key])
        #expect(!holds.hasAsked)
    }

    @Test("one relay may hold at most maxGrantsPerRelay streams here; a refresh of one it holds is always taken")
    func grantBound() {
        var holds = FlowHolds()
        let now = NIODeadline.uptimeNanoseconds(1_000)
        let limit = FlowHolds.maxGrantsPerRelay
        var taken = 0
        for i in 0..<limit { taken += holds.grant(HoldKey(relay: b, stream: .publish(topic: "t\(i)")), until: now) ? 1 : 0 }
        let over = holds.grant(HoldKey(relay: b, stream: .publish(topic: "one too many")), until: now)
        let refresh = holds.grant(HoldKey(relay: b, stream: .publish(topic: "t0")), until: now + .seconds(1))
        let otherRelay = holds.grant(HoldKey(relay: c, stream: .publish(topic: "t0")), until: now)
        #expect(taken == limit && !over && refresh && otherRelay)
        #expect(holds.isLive(HoldKey(relay: b, stream: .publish(topic: "t0")), until: now + .seconds(1)))
        // One ending makes room for one more.
        _ = holds.revoke(HoldKey(relay: b, stream: .publish(topic: "t1")))
        let again = holds.grant(HoldKey(relay: b, stream: .publish(topic: "one too many")), until: now)
        #expect(again)
        _ = holds.forget(relay: b)
        let fresh = holds.grant(HoldKey(relay: b, stream: .publish(topic: "t1")), until: now)
        #expect(fresh && holds.grantCount == 2)
    }

    @Test("forgetting a relay ends its holds both ways and nobody else's")
    func forgetting() {
        var holds = FlowHolds()
        let atB = HoldKey(relay: b, stream: .event(topic: "t@us"))
        let atC = HoldKey(relay: c, stream: .event(topic: "t@us"))
        _ = holds.ask(atB, for: ConnectionID(1))
        _ = holds.ask(atC, for: ConnectionID(1))
        let now = NIODeadline.uptimeNanoseconds(1_000)
        holds.grant(atB, until: now)
        let pauses = [holds.pause(ConnectionID(5), by: atB), holds.pause(ConnectionID(5), by: atB)]
        #expect(pauses == [true, false])
        let ended = holds.forget(relay: b)
        #expect(ended.count == 1 && ended[0].0 == atB && ended[0].1 == [ConnectionID(5)])
        #expect(holds.askedKeys.map { $0 } == [atC])
        #expect(holds.receiverDone(ConnectionID(1)) == [atC])
        #expect(holds.expire(atB, until: now) == nil)
    }
}

@Suite("Relay core: flow control over gateway links")
struct CoreGatewayFlowControlTests {
    static let body = ByteBuffer(repeating: 3, count: 100)
    static let open = ExportTable([ExportRule(kinds: [.subscribe, .publish, .broadcast], pattern: "*")])

    @Test("a blocked receiver here of what a gateway link brings in holds that link's gateway, as it would a relay")
    func receiverHoldsGateway() {
        var d = CoreDriver(network: "us", exports: ["eu": Self.open])
        let (g, _) = d.link(1, network: "eu")
        let subscriber = d.connect()
        let member = d.connect(cluster: "workers")
        _ = d.send(.subscribe(topic: "orders"), from: subscriber)
        _ = d.writability(subscriber, false)
        _ = d.writability(member, false)
        let order = d.fromGateway(.publish(topic: "orders", body: Self.body), g)
        #expect(order.frames(to: subscriber) == [.publish(topic: "orders", event: Self.body)])
        #expect(order.peerFrames(to: g) == [.hold(stream: .publish(topic: "orders"), leaseMillis: 1000)])
        let work = d.fromGateway(.broadcast(cluster: "workers", body: Self.body), g)
        #expect(work.peerFrames(to: g) == [.hold(stream: .broadcast(cluster: "workers"), leaseMillis: 1000)])
        #expect(d.writability(subscriber, true).peerFrames(to: g) == [.release(stream: .publish(topic: "orders"))])
        // The link going down forgets what was asked of it (the member's hold is still asked).
        #expect(d.core.holds.askedKeys.contains { $0.relay == g })
        _ = d.unlink(g)
        #expect(!d.core.holds.askedKeys.contains { $0.relay == g })
    }

    @Test("a hold from a gateway link pauses the local publishers whose events go to that network's interest")
    func gatewayHoldsPublisher() {
        var d = CoreDriver(network: "us", exports: ["eu": Self.open])
        let (g, _) = d.link(1, network: "eu")
        _ = d.fromGateway(.interest(topics: ["news"], patterns: []), g)
        let publisher = d.connect()
        #expect(d.send(.publish(topic: "news", event: Self.body), from: publisher).peerFrames(to: g) == [.event(topic: "news", body: Self.body)])
        _ = d.fromGateway(.hold(stream: .event(topic: "news"), leaseMillis: 1000), g)
        let held = d.send(.publish(topic: "news", event: Self.body), from: publisher)
        #expect(held.peerFrames(to: g) == [.event(topic: "news", body: Self.body)])
        #expect(held.contains(.pauseReading(publisher)))
        #expect(d.fromGateway(.release(stream: .event(topic: "news")), g) == [.resumeReading(publisher)])
    }
}
