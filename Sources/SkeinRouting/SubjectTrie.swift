import SkeinFederation

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

    /// Adds `value` under `pattern`; false if it was there already. `match` reports it with
    /// `label` (the pattern itself by default: a caller that indexes a part of a name reports
    /// the whole).
    @discardableResult
    public mutating func insert(_ pattern: String, _ value: Value, label: String? = nil) -> Bool {
        copyIfShared()
        var node = root
        for token in pattern.split(separator: ".", omittingEmptySubsequences: false) {
            node = Self.child(of: node, token, create: true)!
        }
        guard !node.values.contains(where: { $0.value == value }) else { return false }
        node.values.append((label ?? pattern, value))
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
        if isEmpty { return [] }
        if let hit = cache[topic] { return hit }
        var out: [(pattern: String, value: Value)] = []
        let tokens = topic.split(separator: ".", omittingEmptySubsequences: false)
        Self.collect(root, tokens[...], into: &out)
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

/// Patterns of this network's topics and of other networks' (`orders.*@us`), each network in a
/// trie of its own: `orders.*@us` matches `orders.eu@us`, never `orders.eu`. Matches report the
/// subscription as it was written, network included. Pure.
public struct PatternIndex<Value: Hashable> {
    private var byNetwork: [String: SubjectTrie<Value>] = [:]

    public init() {}

    public var isEmpty: Bool { byNetwork.isEmpty }

    /// The bare pattern and the network of `subscription` ("" for this network's). A suffix that
    /// is no network name is part of the pattern, as in `FederatedName`.
    private static func split(_ subscription: String) -> (pattern: String, network: String) {
        guard subscription.utf8.contains(UInt8(ascii: "@")) else { return (subscription, "") }
        let name = FederatedName(subscription, localNetwork: "")
        return (name.name, name.network ?? "")
    }

    @discardableResult
    public mutating func insert(_ subscription: String, _ value: Value) -> Bool {
        let (pattern, network) = Self.split(subscription)
        return byNetwork[network, default: SubjectTrie()].insert(pattern, value, label: subscription)
    }

    @discardableResult
    public mutating func remove(_ subscription: String, _ value: Value) -> Bool {
        let (pattern, network) = Self.split(subscription)
        guard byNetwork[network]?.remove(pattern, value) == true else { return false }
        if byNetwork[network]!.isEmpty { byNetwork[network] = nil }
        return true
    }

    /// Every (subscription, value) matching the concrete `topic` (`name` or `name@network`).
    public mutating func match(_ topic: String) -> [(pattern: String, value: Value)] {
        if byNetwork.isEmpty { return [] }
        let (name, network) = Self.split(topic)
        return byNetwork[network]?.match(name) ?? []
    }

    /// The distinct values matching `topic`, in first-match order.
    public mutating func values(matching topic: String) -> [Value] {
        var seen = Set<Value>()
        return match(topic).compactMap { seen.insert($0.value).inserted ? $0.value : nil }
    }
}

// The nodes are classes, but a trie is a value: every change first copies nodes that any other
// copy still shares (`copyIfShared`), and matching only reads them.
extension SubjectTrie: @unchecked Sendable where Value: Sendable {}
extension PatternIndex: Sendable where Value: Sendable {}
