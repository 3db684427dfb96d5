import SkeinRouting

/// What one local connection subscribes to: a topic by its name (every `v1.0-draft2` and
/// `skein/1` subscription, and a `skein/2` one without a wildcard), or a `skein/2` pattern
/// (Docs/skein-2.md, "Wildcard topics").
enum TopicSubscription: Hashable {
    case literal(String)
    case pattern(String)

    var name: String {
        switch self {
        case .literal(let name), .pattern(let name): name
        }
    }
}

/// The local subscriptions an event on one topic reaches: those that name it (sent PUBLISH)
/// and the patterns that match it (sent EVENT, naming the pattern).
struct LocalSubscribers {
    var literal: [ConnectionID] = []
    var patterns: [(pattern: String, value: ConnectionID)] = []

    var isEmpty: Bool { literal.isEmpty && patterns.isEmpty }

    /// Every receiver, once per subscription (a connection with two matching subscriptions
    /// receives, and queues, two copies).
    var connections: [ConnectionID] { patterns.isEmpty ? literal : literal + patterns.map(\.value) }
}

/// Which local connections subscribe to which topics and patterns, both ways (the relay core's
/// part for publish/subscribe; what other relays subscribe to is `RoutingTable`'s). Pure.
struct TopicIndex {
    /// Per topic, its subscribers in the order they subscribed (events go out in that order).
    private var subscribersByTopic: [String: [ConnectionID]] = [:]
    private var patternIndex = PatternIndex<ConnectionID>()
    /// Per pattern, how many connections subscribe to it.
    private(set) var patternCounts: [String: Int] = [:]
    private var subscriptionsByConnection: [ConnectionID: Set<TopicSubscription>] = [:]

    /// The subscriptions an event on `topic` reaches. Mutating only for the pattern index's cache.
    mutating func subscribers(of topic: String) -> LocalSubscribers {
        LocalSubscribers(literal: subscribersByTopic[topic] ?? [], patterns: patternIndex.match(topic))
    }

    func subscriptions(of connection: ConnectionID) -> Set<TopicSubscription> { subscriptionsByConnection[connection] ?? [] }

    /// Every topic someone here subscribes to by name.
    var subscribedTopics: Dictionary<String, [ConnectionID]>.Keys { subscribersByTopic.keys }

    /// Every pattern someone here subscribes to.
    var subscribedPatterns: Dictionary<String, Int>.Keys { patternCounts.keys }

    /// Subscriptions per topic (what this relay's metadata advertises of its own connections).
    var counts: [String: Int] { subscribersByTopic.mapValues(\.count) }

    /// False if `connection` already had this subscription (nothing changes).
    mutating func subscribe(_ connection: ConnectionID, to subscription: TopicSubscription) -> Bool {
        guard subscriptionsByConnection[connection, default: []].insert(subscription).inserted else { return false }
        switch subscription {
        case .literal(let topic):
            subscribersByTopic[topic, default: []].append(connection)
        case .pattern(let pattern):
            patternIndex.insert(pattern, connection)
            patternCounts[pattern, default: 0] += 1
        }
        return true
    }

    /// False if `connection` did not have this subscription (nothing changes).
    mutating func unsubscribe(_ connection: ConnectionID, from subscription: TopicSubscription) -> Bool {
        guard subscriptionsByConnection[connection]?.remove(subscription) != nil else { return false }
        if subscriptionsByConnection[connection]!.isEmpty { subscriptionsByConnection[connection] = nil }
        drop(connection, from: subscription)
        return true
    }

    /// Ends every subscription of `connection` (it closed); returns them.
    @discardableResult
    mutating func removeAll(of connection: ConnectionID) -> Set<TopicSubscription> {
        guard let subscriptions = subscriptionsByConnection.removeValue(forKey: connection) else { return [] }
        for subscription in subscriptions { drop(connection, from: subscription) }
        return subscriptions
    }

    private mutating func drop(_ connection: ConnectionID, from subscription: TopicSubscription) {
        switch subscription {
        case .literal(let topic):
            subscribersByTopic[topic]?.removeAll { $0 == connection }
            if subscribersByTopic[topic]?.isEmpty == true { subscribersByTopic[topic] = nil }
        case .pattern(let pattern):
            patternIndex.remove(pattern, connection)
            patternCounts[pattern, default: 1] -= 1
            if patternCounts[pattern] == 0 { patternCounts[pattern] = nil }
        }
    }
}
