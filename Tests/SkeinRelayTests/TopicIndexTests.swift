@testable import SkeinRelay
import Testing

/// Local subscriptions, both ways: by topic in subscription order, by connection.
@Suite struct TopicIndexTests {
    let a = ConnectionID(1)
    let b = ConnectionID(2)
    let c = ConnectionID(3)

    @Test func subscribersAreKeptInOrderAndTwiceIsRefused() {
        var index = TopicIndex()
        let first = [index.subscribe(b, to: "t"), index.subscribe(a, to: "t"), index.subscribe(a, to: "u")]
        let again = index.subscribe(a, to: "t")
        #expect(first == [true, true, true] && !again)
        #expect(index.subscribers(of: "t") == [b, a] && index.subscribers(of: "none").isEmpty)
        #expect(index.topics(of: a) == ["t", "u"] && index.counts == ["t": 2, "u": 1])
        #expect(index.hasSubscribers("u") && Set(index.subscribedTopics) == ["t", "u"])
    }

    @Test func unsubscribingAndClosingLeaveNothingBehind() {
        var index = TopicIndex()
        _ = index.subscribe(a, to: "t")
        _ = index.subscribe(b, to: "t")
        _ = index.subscribe(a, to: "u")
        let strangers = [index.unsubscribe(c, from: "t"), index.unsubscribe(b, from: "u")]
        let real = index.unsubscribe(b, from: "t")
        #expect(strangers == [false, false] && real)
        #expect(index.subscribers(of: "t") == [a] && index.topics(of: b).isEmpty)
        let closed = index.removeAll(of: a)
        let again = index.removeAll(of: a)
        #expect(closed == ["t", "u"] && again.isEmpty)
        #expect(!index.hasSubscribers("t") && !index.hasSubscribers("u") && index.counts.isEmpty)
    }
}
