/// Which local connections subscribe to which topics, both ways (the relay core's part for
/// publish/subscribe; what other relays subscribe to is `RoutingTable`'s). Pure.
struct TopicIndex {
    /// Per topic, its subscribers in the order they subscribed (events go out in that order).
    private var subscribersByTopic: [String: [ConnectionID]] = [:]
    private var topicsByConnection: [ConnectionID: Set<String>] = [:]

    /// The connections subscribed to `topic`.
    func subscribers(of topic: String) -> [ConnectionID] { subscribersByTopic[topic] ?? [] }

    /// Whether anyone here subscribes to `topic`.
    func hasSubscribers(_ topic: String) -> Bool { subscribersByTopic[topic] != nil }

    func topics(of connection: ConnectionID) -> Set<String> { topicsByConnection[connection] ?? [] }

    /// Every topic someone here subscribes to.
    var subscribedTopics: Dictionary<String, [ConnectionID]>.Keys { subscribersByTopic.keys }

    /// Subscriptions per topic (what this relay's metadata advertises of its own connections).
    var counts: [String: Int] { subscribersByTopic.mapValues(\.count) }

    /// False if `connection` was already subscribed to `topic` (nothing changes).
    mutating func subscribe(_ connection: ConnectionID, to topic: String) -> Bool {
        guard topicsByConnection[connection, default: []].insert(topic).inserted else { return false }
        subscribersByTopic[topic, default: []].append(connection)
        return true
    }

    /// False if `connection` was not subscribed to `topic` (nothing changes).
    mutating func unsubscribe(_ connection: ConnectionID, from topic: String) -> Bool {
        guard topicsByConnection[connection]?.remove(topic) != nil else { return false }
        if topicsByConnection[connection]!.isEmpty { topicsByConnection[connection] = nil }
        drop(connection, from: topic)
        return true
    }

    /// Ends every subscription of `connection` (it closed); returns its topics.
    @discardableResult
    mutating func removeAll(of connection: ConnectionID) -> Set<String> {
        guard let topics = topicsByConnection.removeValue(forKey: connection) else { return [] }
        for topic in topics { drop(connection, from: topic) }
        return topics
    }

    private mutating func drop(_ connection: ConnectionID, from topic: String) {
        subscribersByTopic[topic]?.removeAll { $0 == connection }
        if subscribersByTopic[topic]?.isEmpty == true { subscribersByTopic[topic] = nil }
    }
}
