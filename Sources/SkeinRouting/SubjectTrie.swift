/// Topic patterns of `skein/2` (Docs/skein-2.md, "Wildcard topics"): tokens separated by `.`,
/// where `*` matches exactly one token and a last `>` one or more.
public enum TopicPattern {
    /// Whether `topic` is a pattern (has a `*` token, or a `>` token), as a `skein/2` SUBSCRIBE
    /// reads it. A topic without one is literal.
    public static func isPattern(_ topic: String) -> Bool {
        topic.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).contains {
            $0.count == 1 && ($0.first == UInt8(ascii: "*") || $0.first == UInt8(ascii: ">"))
        }
    }

    /// Why `pattern` is not a valid pattern (an empty token, `>` before the end), or nil.
    public static func problem(with pattern: String) -> String? {
        let tokens = pattern.split(separator: ".", omittingEmptySubsequences: false)
        if tokens.contains(where: \.isEmpty) { return "a pattern has no empty tokens" }
        if tokens.dropLast().contains(">") { return "'>' may only be the last token" }
        return nil
    }

    /// Whether a concrete topic is one a `skein/2` client may publish to (no wildcard token).
    public static func isPublishable(_ topic: String) -> Bool { !isPattern(topic) }

    /// Whether `pattern` matches `topic`, token by token (the reference the index is tested
    /// against).
    public static func matches(_ pattern: String, _ topic: String) -> Bool {
        let p = pattern.split(separator: ".", omittingEmptySubsequences: false)
        let t = topic.split(separator: ".", omittingEmptySubsequences: false)
        for (i, token) in p.enumerated() {
            if token == ">" && i == p.count - 1 { return t.count > i }
            guard i < t.count, token == "*" || token == t[i] else { return false }
        }
        return p.count == t.count
    }
}

/// An index from topic patterns to values (subscribers, relays): a token trie, as NATS's
/// sublist, so a publish looks up its topic's tokens instead of scanning every pattern, with a
/// bounded cache of recent answers that any change clears. Pure.
///
/// Values are kept per pattern in insertion order; `match` returns each (pattern, value) pair
/// once, literal-token branches first, then `*`, then `>`.
public struct SubjectTrie<Value: Hashable> {
    private final class Node {
        var children: [Substring: Node] = [:]
        var star: Node?
        var tail: Node?
        /// Values subscribed to the pattern ending here, with the pattern.
        var values: [(pattern: String, value: Value)] = []
        var isEmpty: Bool { children.isEmpty && star == nil && tail == nil && values.isEmpty }
    }

    private var root = Node()
    private var cache: [String: [(pattern: String, value: Value)]] = [:]
    public private(set) var count = 0
    /// Most topics whose answers are kept.
    public let cacheLimit: Int

    public init(cacheLimit: Int = 4096) { self.cacheLimit = cacheLimit }

    public var isEmpty: Bool { count == 0 }

    /// Adds `value` under `pattern`; false if it was there already.
    @discardableResult
    public mutating func insert(_ pattern: String, _ value: Value) -> Bool {
        copyIfShared()
        var node = root
        for token in pattern.split(separator: ".", omittingEmptySubsequences: false) {
            node = Self.child(of: node, token, create: true)!
        }
        guard !node.values.contains(where: { $0.value == value }) else { return false }
        node.values.append((pattern, value))
        count += 1
        cache.removeAll(keepingCapacity: true)
        return true
    }

    /// Removes `value` from `pattern`; false if it was not there.
    @discardableResult
    public mutating func remove(_ pattern: String, _ value: Value) -> Bool {
        copyIfShared()
        var path: [(Node, Substring)] = []
        var node = root
        for token in pattern.split(separator: ".", omittingEmptySubsequences: false) {
            guard let next = Self.child(of: node, token, create: false) else { return false }
            path.append((node, token))
            node = next
        }
        guard let index = node.values.firstIndex(where: { $0.value == value }) else { return false }
        node.values.remove(at: index)
        count -= 1
        cache.removeAll(keepingCapacity: true)
        // Prune empty branches, deepest first.
        for (parent, token) in path.reversed() {
            guard let child = Self.child(of: parent, token, create: false), child.isEmpty else { break }
            switch token {
            case "*": parent.star = nil
            case ">": parent.tail = nil
            default: parent.children[token] = nil
            }
        }
        return true
    }

    /// Every (pattern, value) whose pattern matches the concrete `topic`.
    public mutating func match(_ topic: String) -> [(pattern: String, value: Value)] {
        if let hit = cache[topic] { return hit }
        var out: [(pattern: String, value: Value)] = []
        if !isEmpty {
            let tokens = topic.split(separator: ".", omittingEmptySubsequences: false)
            Self.collect(root, tokens[...], into: &out)
        }
        if cache.count >= cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[topic] = out
        return out
    }

    /// The distinct values whose patterns match `topic`, in first-match order.
    public mutating func values(matching topic: String) -> [Value] {
        var seen = Set<Value>()
        return match(topic).compactMap { seen.insert($0.value).inserted ? $0.value : nil }
    }

    private static func collect(_ node: Node, _ tokens: ArraySlice<Substring>, into out: inout [(pattern: String, value: Value)]) {
        guard let token = tokens.first else {
            out.append(contentsOf: node.values)
            return
        }
        let rest = tokens.dropFirst()
        if let next = node.children[token] { collect(next, rest, into: &out) }
        if let star = node.star { collect(star, rest, into: &out) }
        // `>` takes this token and everything after it (at least one token: this one).
        if let tail = node.tail { out.append(contentsOf: tail.values) }
    }

    private static func child(of node: Node, _ token: Substring, create: Bool) -> Node? {
        switch token {
        case "*":
            if node.star == nil && create { node.star = Node() }
            return node.star
        case ">":
            if node.tail == nil && create { node.tail = Node() }
            return node.tail
        default:
            if let existing = node.children[token] { return existing }
            guard create else { return nil }
            let made = Node()
            node.children[token] = made
            return made
        }
    }

    /// Value semantics over reference nodes: a copy that is changed first copies the trie.
    private mutating func copyIfShared() {
        guard !isKnownUniquelyReferenced(&root) else { return }
        root = Self.deepCopy(root)
    }

    private static func deepCopy(_ node: Node) -> Node {
        let copy = Node()
        copy.values = node.values
        for (token, child) in node.children { copy.children[token] = deepCopy(child) }
        copy.star = node.star.map(deepCopy)
        copy.tail = node.tail.map(deepCopy)
        return copy
    }
}
