import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay

@Suite("Core: broadcast, publish / subscribe, backpressure")
struct CoreMessagingTests {
    @Test("BROADCAST reaches every member of the cluster, the sender included, and no one else")
    func broadcast() {
        var d = CoreDriver()
        let a = d.connect(cluster: "echo")
        let b = d.connect(cluster: "echo")
        let other = d.connect(cluster: "other")
        let client = d.connect()
        let fromClient = d.send(.broadcast(cluster: "echo", message: buffer("hi")), from: client)
        #expect(fromClient.effects == [.send(a, .broadcast(message: buffer("hi"))), .send(b, .broadcast(message: buffer("hi")))])
        let fromMember = d.send(.broadcast(cluster: "echo", message: buffer("yo")), from: b)
        #expect(Set(fromMember.sent.map(\.0)) == [a, b])
        #expect(fromMember.frames(to: other).isEmpty)
    }

    @Test("BROADCAST to a cluster without members is reported, not an error")
    func broadcastNowhere() {
        var d = CoreDriver()
        let client = d.connect()
        let out = d.send(.broadcast(cluster: "nobody", message: buffer("hi")), from: client)
        #expect(out == [.report(.broadcastWithoutMembers(cluster: "nobody"))])
    }

    @Test("PUBLISH reaches every subscriber, the publisher included, in publish order")
    func publish() {
        var d = CoreDriver()
        let s1 = d.connect()
        let s2 = d.connect(cluster: "echo")
        let publisher = d.connect()
        let bystander = d.connect()
        for c in [s1, s2, publisher] {
            #expect(d.send(.subscribe(topic: "news"), from: c).isEmpty)
        }
        _ = d.send(.subscribe(topic: "sports"), from: bystander)
        var all: [RelayAction] = []
        for i in 0..<20 {
            all += d.send(.publish(topic: "news", event: buffer("e\(i)")), from: publisher)
        }
        let expected = (0..<20).map { RelayFrame.publish(topic: "news", event: buffer("e\($0)")) }
        #expect(all.frames(to: s1) == expected)
        #expect(all.frames(to: s2) == expected)
        #expect(all.frames(to: publisher) == expected)
        #expect(all.frames(to: bystander).isEmpty)
    }

    @Test("PUBLISH to a topic without subscribers does nothing")
    func publishNowhere() {
        var d = CoreDriver()
        let p = d.connect()
        #expect(d.send(.publish(topic: "void", event: buffer("x")), from: p).isEmpty)
    }

    @Test("UNSUBSCRIBE stops delivery to that connection only")
    func unsubscribe() {
        var d = CoreDriver()
        let a = d.connect()
        let b = d.connect()
        _ = d.send(.subscribe(topic: "t"), from: a)
        _ = d.send(.subscribe(topic: "t"), from: b)
        #expect(d.send(.unsubscribe(topic: "t"), from: a).isEmpty)
        #expect(d.send(.publish(topic: "t", event: buffer("x")), from: a).effects == [.send(b, .publish(topic: "t", event: buffer("x")))])
        _ = d.send(.unsubscribe(topic: "t"), from: b)
        #expect(d.core.topicSubscriptions.isEmpty)
    }

    @Test("subscribing twice is a violation that closes the connection")
    func subscribeTwice() {
        var d = CoreDriver()
        let c = d.connect()
        _ = d.send(.subscribe(topic: "t"), from: c)
        let out = d.send(.subscribe(topic: "t"), from: c)
        #expect(out.closeReason(of: c) == "protocol violation: already subscribed to topic \"t\"")
        #expect(out.violations.count == 1)
        #expect(d.core.topicSubscriptions.isEmpty)
    }

    @Test("unsubscribing from a topic not subscribed is a violation that closes the connection")
    func unsubscribeUnknown() {
        var d = CoreDriver()
        let c = d.connect()
        let out = d.send(.unsubscribe(topic: "t"), from: c)
        #expect(out.closeReason(of: c) == "protocol violation: not subscribed to topic \"t\"")
        #expect(out.violations.count == 1)
    }

    // MARK: - Backpressure

    @Test("publishing to a blocked subscriber pauses the publisher; writable again resumes it")
    func pauseAndResume() {
        var d = CoreDriver()
        let subscriber = d.connect()
        let other = d.connect()
        let publisher = d.connect()
        _ = d.send(.subscribe(topic: "t"), from: subscriber)
        _ = d.send(.subscribe(topic: "t"), from: other)
        #expect(d.writability(subscriber, false).isEmpty)

        let first = d.send(.publish(topic: "t", event: buffer("1")), from: publisher)
        #expect(first.frames(to: subscriber) == [.publish(topic: "t", event: buffer("1"))], "what was accepted is still delivered")
        #expect(first.filter { $0 == .pauseReading(publisher) }.count == 1)
        // The shell may still hand over frames from the same read: no second pause.
        let second = d.send(.publish(topic: "t", event: buffer("2")), from: publisher)
        #expect(!second.contains(.pauseReading(publisher)))

        #expect(d.writability(subscriber, true) == [.resumeReading(publisher)])
        #expect(d.writability(subscriber, true).isEmpty, "no change, no action")
    }

    @Test("a publisher blocked by two subscribers resumes only when both drain")
    func twoBlockers() {
        var d = CoreDriver()
        let s1 = d.connect()
        let s2 = d.connect()
        let p = d.connect()
        _ = d.send(.subscribe(topic: "t"), from: s1)
        _ = d.send(.subscribe(topic: "t"), from: s2)
        _ = d.writability(s1, false)
        _ = d.writability(s2, false)
        let out = d.send(.publish(topic: "t", event: buffer("x")), from: p)
        #expect(out.filter { $0 == .pauseReading(p) }.count == 1)
        #expect(d.writability(s1, true).isEmpty)
        #expect(d.writability(s2, true) == [.resumeReading(p)])
    }

    @Test("broadcasting to a blocked member pauses the sender")
    func broadcastBackpressure() {
        var d = CoreDriver()
        let m = d.connect(cluster: "echo")
        let sender = d.connect()
        _ = d.writability(m, false)
        #expect(d.send(.broadcast(cluster: "echo", message: buffer("x")), from: sender).contains(.pauseReading(sender)))
        #expect(d.writability(m, true) == [.resumeReading(sender)])
    }

    @Test("a blocked subscriber going away resumes the publishers it held")
    func blockerLeaves() {
        var d = CoreDriver()
        let s = d.connect()
        let p = d.connect()
        _ = d.send(.subscribe(topic: "t"), from: s)
        _ = d.writability(s, false)
        _ = d.send(.publish(topic: "t", event: buffer("x")), from: p)
        #expect(d.lose(s).contains(.resumeReading(p)))
    }

    @Test("a connection publishing to itself is never paused by its own output")
    func selfDelivery() {
        var d = CoreDriver()
        let c = d.connect()
        _ = d.send(.subscribe(topic: "t"), from: c)
        _ = d.writability(c, false)
        #expect(!d.send(.publish(topic: "t", event: buffer("x")), from: c).contains(.pauseReading(c)))
    }

    @Test("a consumer blocked for slowConsumerTimeout is closed with a reason")
    func slowConsumer() {
        var d = CoreDriver { $0.slowConsumerTimeout = .seconds(10) }
        let s = d.connect()
        let p = d.connect()
        _ = d.send(.subscribe(topic: "t"), from: s)
        _ = d.writability(s, false)
        _ = d.send(.publish(topic: "t", event: buffer("x")), from: p)
        #expect(d.advance(.milliseconds(9999)).isEmpty)
        let out = d.advance(.milliseconds(1))
        #expect(out.reports.first == .slowConsumer(s, reason: "slow consumer: output blocked for more than 10000 ms"))
        #expect(out.closeReason(of: s) == "slow consumer: output blocked for more than 10000 ms")
        #expect(out.contains(.resumeReading(p)), "the publisher it held is released")
        #expect(d.core.topicSubscriptions.isEmpty)
    }

    @Test("a consumer that drains in time is not closed, even if it blocks again later")
    func slowConsumerRecovers() {
        var d = CoreDriver { $0.slowConsumerTimeout = .seconds(10) }
        let s = d.connect()
        _ = d.writability(s, false)
        _ = d.advance(.seconds(6))
        _ = d.writability(s, true)
        _ = d.advance(.seconds(1))
        _ = d.writability(s, false)
        // The first episode's timer fires at 10 s: it must not count the new episode.
        #expect(d.advance(.seconds(3)).isEmpty)
        #expect(d.advance(.milliseconds(6999)).isEmpty)
        #expect(d.advance(.milliseconds(1)).closeReason(of: s) != nil)
    }
}
