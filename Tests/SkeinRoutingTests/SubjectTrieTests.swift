import SkeinFederation
import Testing

@testable import SkeinRouting

@Suite("Topic patterns and the subject trie")
struct SubjectTrieTests {
    /// Docs/skein-2.md, "Wildcard topics": (pattern, topic, matches).
    static let table: [(String, String, Bool)] = [
        ("orders.*.paid", "orders.eu.paid", true),
        ("orders.*.paid", "orders.paid", false),
        ("orders.*.paid", "orders.eu.x.paid", false),
        ("metrics.>", "metrics.cpu", true),
        ("metrics.>", "metrics.cpu.user", true),
        ("metrics.>", "metrics", false),
        ("*", "a", true),
        ("*", "a.b", false),
        (">", "a", true),
        (">", "a.b.c", true),
        ("*.*", "a.b", true),
        ("*.>", "a", false),
        ("*.>", "a.b", true),
        ("a.b", "a.b", true),
        ("a.b", "a.b.c", false),
        ("a.*", "a.*", true),  // an Iris topic named `a.*` has the tokens `a` and `*`
        ("a*.b", "ax.b", false),  // `*` inside a token is a plain character
        ("a*.b", "a*.b", true),
    ]

    @Test("the reference matcher follows the table")
    func reference() {
        for (pattern, topic, expected) in Self.table {
            #expect(TopicPattern.matches(pattern, topic) == expected, "\(pattern) ~ \(topic)")
        }
    }

    @Test("the trie answers what the reference matcher does, for every pattern and topic of the table")
    func trieFollowsReference() {
        var trie = SubjectTrie<Int>()
        let patterns = Array(Set(Self.table.map(\.0))).sorted()
        for (i, pattern) in patterns.enumerated() {
            let inserted = trie.insert(pattern, i)
            #expect(inserted)
        }
        #expect(trie.count == patterns.count)
        for topic in Set(Self.table.map(\.1)) {
            let expected = Set(patterns.enumerated().filter { TopicPattern.matches($0.element, topic) }.map(\.offset))
            let v1 = trie.match(topic)
            #expect(Set(v1.map(\.value)) == expected, "\(topic)")
            let v2 = trie.match(topic)
            #expect(v2.count == expected.count, "each subscription once")
        }
    }

    @Test("what is a pattern, which patterns are invalid, what may be published")
    func validity() {
        #expect(TopicPattern.isPattern("a.*") && TopicPattern.isPattern(">") && TopicPattern.isPattern("a.>.b"))
        #expect(!TopicPattern.isPattern("a.b") && !TopicPattern.isPattern("a*.b") && !TopicPattern.isPattern(""))
        #expect(TopicPattern.problem(with: "a.*") == nil && TopicPattern.problem(with: "a.>") == nil)
        #expect(TopicPattern.problem(with: "a..*") != nil && TopicPattern.problem(with: ".a.*") != nil)
        #expect(TopicPattern.problem(with: "a.>.b") != nil)
        #expect(TopicPattern.isPublishable("a.b") && !TopicPattern.isPublishable("a.*"))
    }

    @Test("insert and remove keep matches exact, prune empty branches, and invalidate the cache")
    func changes() {
        var trie = SubjectTrie<String>()
        trie.insert("a.*", "x")
        trie.insert("a.>", "x")
        trie.insert("a.*", "y")
        let v3 = trie.insert("a.*", "y")
        #expect(!v3)
        let v4 = trie.match("a.b")
        #expect(v4.map(\.value) == ["x", "y", "x"])  // once per subscription
        let v5 = trie.values(matching: "a.b")
        #expect(v5 == ["x", "y"])  // once per value
        let v6 = trie.remove("a.*", "x")
        #expect(v6)
        let v7 = trie.remove("a.*", "x")
        #expect(!v7)
        let v8 = trie.remove("q.*", "x")
        #expect(!v8)
        let v9 = trie.match("a.b")
        #expect(v9.map(\.value) == ["y", "x"])
        trie.remove("a.*", "y")
        trie.remove("a.>", "x")
        #expect(trie.isEmpty)
        let v10 = trie.match("a.b")
        #expect(v10.isEmpty)
    }

    @Test("a copy is independent of its original")
    func valueSemantics() {
        var original = SubjectTrie<Int>()
        original.insert("a.*", 1)
        var copy = original
        copy.insert("a.>", 2)
        copy.remove("a.*", 1)
        let v11 = original.match("a.b")
        #expect(v11.map(\.value) == [1])
        let v12 = copy.match("a.b")
        #expect(v12.map(\.value) == [2])
    }

    @Test("random patterns against random topics: the trie never disagrees with the reference")
    func randomised() {
        var random = SplitMix64(seed: 0x5EED)  // the same sequence on every run
        let words = ["a", "b", "c", "*", ">"]
        func pattern() -> String {
            let n = Int.random(in: 1...4, using: &random)
            var tokens = (0..<n).map { _ in words.randomElement(using: &random)! }
            for i in tokens.indices.dropLast() where tokens[i] == ">" { tokens[i] = "a" }
            return tokens.joined(separator: ".")
        }
        func topic() -> String { (0..<Int.random(in: 1...5, using: &random)).map { _ in ["a", "b", "c"].randomElement(using: &random)! }.joined(separator: ".") }
        var trie = SubjectTrie<Int>(cacheLimit: 8)
        var live: [(String, Int)] = []
        for step in 0..<2000 {
            if live.isEmpty || Bool.random(using: &random) {
                let p = pattern()
                if trie.insert(p, step) { live.append((p, step)) }
            } else {
                let (p, v) = live.remove(at: Int.random(in: 0..<live.count, using: &random))
                let v13 = trie.remove(p, v)
                #expect(v13)
            }
            let t = topic()
            let expected = Set(live.filter { TopicPattern.matches($0.0, t) }.map(\.1))
            let v14 = trie.match(t)
            #expect(Set(v14.map(\.value)) == expected, "\(t)")
        }
    }
}

