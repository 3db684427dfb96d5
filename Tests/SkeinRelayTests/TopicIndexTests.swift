@testable import SkeinRelay
import Testing

/// Local subscriptions, both ways: by topic in subscription order, by connection; `skein/2`
/// patterns beside the literal topics.
@Suite struct TopicIndexTests {
    let a = ConnectionID(1)
    let b = ConnectionID(2)
    let c = ConnectionID(3)

    @Test func subscribersAreKeptInOrderAndTwiceIsRefused() {
        var index = TopicIndex()
        let first = [index.subscribe(b, to: .literal("t")), index.subscribe(a, to: .literal("t")), index.subscribe(a, to: .literal("u"))]
        let again = index.subscribe(a, to: .literal("t"))
        #expect(first == [true, true, true] && !again)
        let t = index.subscribers(of: "t")
        let none = index.subscribers(of: "none")
        #expect(t.literal == [b, a] && t.patterns.isEmpty && none.isEmpty)
        #expect(index.subscriptions(of: a) == [.literal("t"), .literal("u")] && index.counts == ["t": 2, "u": 1])
        #expect(Set(index.subscribedTopics) == ["t", "u"] && index.subscribedPatterns.isEmpty)
    }

    @Test func unsubscribingAndClosingLeaveNothingBehind() {
        var index = TopicIndex()
        _ = index.subscribe(a, to: .literal("t"))
        _ = index.subscribe(b, to: .literal("t"))
        _ = index.subscribe(a, to: .literal("u"))
        _ = index.subscribe(a, to: .pattern("t.*"))
        let strangers = [index.unsubscribe(c, from: .literal("t")), index.unsubscribe(b, from: .literal("u")), index.unsubscribe(b, from: .pattern("t.*"))]
        let real = index.unsubscribe(b, from: .literal("t"))
        #expect(strangers == [false, false, false] && real)
        #expect(index.subscribers(of: "t").literal == [a] && index.subscriptions(of: b).isEmpty)
        let closed = index.removeAll(of: a)
        let again = index.removeAll(of: a)
        #expect(closed == [.literal("t"), .literal("u"), .pattern("t.*")] && again.isEmpty)
        let t = index.subscribers(of: "t")
        let tx = index.subscribers(of: "t.x")
        #expect(t.isEmpty && tx.isEmpty && index.counts.isEmpty && index.patternCounts.isEmpty)
    }

    @Test("a pattern and a literal of the same text are different subscriptions; an event reaches every matching one")
    func patternsBesideLiterals() {
        var index = TopicIndex()
        // An Iris client's literal `a.*` and a skein/2 client's pattern `a.*`.
        _ = index.subscribe(a, to: .literal("a.*"))
        _ = index.subscribe(b, to: .pattern("a.*"))
        _ = index.subscribe(b, to: .pattern("a.>"))
        _ = index.subscribe(c, to: .literal("a.b"))
        let ab = index.subscribers(of: "a.b")
        #expect(ab.literal == [c] && ab.patterns.map(\.pattern) == ["a.*", "a.>"] && ab.connections == [c, b, b])
        // An Iris publish to the literal `a.*` also reaches the patterns that match its tokens.
        let star = index.subscribers(of: "a.*")
        #expect(star.literal == [a] && star.patterns.map(\.pattern) == ["a.*", "a.>"])
        let deep = index.subscribers(of: "a.b.c")
        #expect(deep.literal.isEmpty && deep.patterns.map(\.pattern) == ["a.>"])
        #expect(index.patternCounts == ["a.*": 1, "a.>": 1])
        // Another network's patterns match only that network's topics.
        _ = index.subscribe(c, to: .pattern("a.*@us"))
        let local = index.subscribers(of: "a.x")
        let remote = index.subscribers(of: "a.x@us")
        #expect(local.patterns.map(\.pattern) == ["a.*", "a.>"] && remote.patterns.map(\.pattern) == ["a.*@us"])
        _ = index.unsubscribe(b, from: .pattern("a.*"))
        #expect(index.subscribers(of: "a.b").patterns.map(\.pattern) == ["a.>"])
    }
}
