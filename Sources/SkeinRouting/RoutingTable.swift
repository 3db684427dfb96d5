import SkeinFederation
import SkeinMembership

/// What one remote relay serves, as its membership metadata says.
public struct RemoteRelay: Sendable, Equatable {
    public var id: NodeID
    public var name: String
    public var zone: String
    /// Cluster → member connections on that relay.
    public var clusters: [String: UInt32]
    public var topics: Set<String>
    /// `skein/2` subscription patterns (Docs/skein-2.md): an event goes to the relay when one
    /// matches its topic.
    public var patterns: Set<String>
    /// The relay's own load figure (its client connections).
    public var load: UInt32
    /// Other networks it is a gateway to, with what each exports to this one (Docs/federation.md).
    public var gateways: [String: ExportTable]

    public init(
        id: NodeID, name: String, zone: String, clusters: [String: UInt32], topics: Set<String>, load: UInt32,
        gateways: [String: ExportTable] = [:], patterns: Set<String> = []
    ) {
        self.id = id
        self.name = name
        self.zone = zone
        self.clusters = clusters
        self.topics = topics
        self.patterns = patterns
        self.load = load
        self.gateways = gateways
    }
}

/// How a relay chooses where a request goes (Docs/mesh.md, "Routing policy").
public struct RoutingPolicy: Sendable, Equatable {
    /// Send to a member on this relay whenever the cluster has one here.
    public var preferLocal = true
    /// Among remote relays, use those in this relay's zone while any serves the cluster.
    public var preferZone = true

    public init(preferLocal: Bool = true, preferZone: Bool = true) {
        self.preferLocal = preferLocal
        self.preferZone = preferZone
    }
}

/// Which remote relays serve which clusters and topics, and the choice of a destination relay.
/// Pure: fed from membership metadata and status; randomness comes from an injected seed.
package struct RoutingTable: Sendable {
    package let localZone: String
    package var policy: RoutingPolicy
    package private(set) var relays: [NodeID: RemoteRelay] = [:]
    private var byCluster: [String: [NodeID]] = [:]
    private var byTopic: [String: [NodeID]] = [:]
    private var byPattern = PatternIndex<NodeID>()
    private var byGateway: [String: [NodeID]] = [:]
    /// Relays taken out of the choice for a moment (`suspend`), with what they serve.
    private var suspended: [NodeID: RemoteRelay] = [:]
    private var random: SplitMix64
    /// Bumped on every change, so callers can tell when to retry waiting work.
    package private(set) var version: UInt64 = 0

    package init(localZone: String = "", policy: RoutingPolicy = RoutingPolicy(), seed: UInt64) {
        self.localZone = localZone
        self.policy = policy
        self.random = SplitMix64(seed: seed)
    }

    /// Adds or replaces what a relay serves. Call only for relays that are alive.
    package mutating func update(_ relay: RemoteRelay) {
        suspended[relay.id] = nil
        if let old = relays[relay.id] {
            if old == relay { return }
            unindex(old)
        }
        relays[relay.id] = relay
        for (cluster, members) in relay.clusters where members > 0 { byCluster[cluster, default: []].append(relay.id) }
        for topic in relay.topics { byTopic[topic, default: []].append(relay.id) }
        for pattern in relay.patterns { byPattern.insert(pattern, relay.id) }
        for network in relay.gateways.keys { byGateway[network, default: []].append(relay.id) }
        version &+= 1
    }

    /// Forgets a relay (dead or left).
    package mutating func remove(_ id: NodeID) {
        // A suspended relay still gets events and broadcasts: forgetting it is a change too.
        if suspended.removeValue(forKey: id) != nil { version &+= 1 }
        guard let old = relays.removeValue(forKey: id) else { return }
        unindex(old)
        version &+= 1
    }

    /// Takes a relay out of the choice for new work while it is unusable for a moment (suspect,
    /// its link broke, a dial failed), but keeps what it serves known: a cluster it serves is not
    /// "without members". `update` puts it back.
    package mutating func suspend(_ id: NodeID) {
        guard let old = relays.removeValue(forKey: id) else { return }
        unindex(old)
        suspended[id] = old
        version &+= 1
    }

    /// Whether any relay, usable now or suspended, is known to serve `cluster`, other than
    /// those in `excluding`.
    package func knowsServer(of cluster: String, excluding: Set<NodeID> = []) -> Bool {
        relays(servingCluster: cluster).contains { !excluding.contains($0) }
            || suspended.values.contains { ($0.clusters[cluster] ?? 0) > 0 && !excluding.contains($0.id) }
    }

    private mutating func unindex(_ relay: RemoteRelay) {
        for cluster in relay.clusters.keys {
            byCluster[cluster]?.removeAll { $0 == relay.id }
            if byCluster[cluster]?.isEmpty == true { byCluster[cluster] = nil }
        }
        for topic in relay.topics {
            byTopic[topic]?.removeAll { $0 == relay.id }
            if byTopic[topic]?.isEmpty == true { byTopic[topic] = nil }
        }
        for pattern in relay.patterns { byPattern.remove(pattern, relay.id) }
        for network in relay.gateways.keys {
            byGateway[network]?.removeAll { $0 == relay.id }
            if byGateway[network]?.isEmpty == true { byGateway[network] = nil }
        }
    }

    /// Remote relays with at least one member of `cluster`.
    package func relays(servingCluster cluster: String) -> [NodeID] { byCluster[cluster] ?? [] }

    /// Remote relays with at least one subscription to `topic`: the usable ones and those
    /// suspended for a moment. An event is not work to balance: a relay that is suspect, or whose
    /// link just broke, is running until membership says otherwise, and its subscribers want
    /// every event (sending redials a broken link). Dropping them instead starved subscribers
    /// behind a lossy link for as long as their relay was suspect (issue 17).
    ///
    /// A relay whose literal topics and patterns both match is named once. Mutating only for the
    /// pattern index's cache.
    package mutating func relays(subscribedTo topic: String) -> [NodeID] {
        var usable = byTopic[topic] ?? []
        if !byPattern.isEmpty {
            for relay in byPattern.values(matching: topic) where !usable.contains(relay) { usable.append(relay) }
        }
        guard !suspended.isEmpty else { return usable }
        return usable
            + suspended.values.filter { relay in
                relay.topics.contains(topic) || relay.patterns.contains { TopicPattern.matches(federated: $0, topic) }
            }.map(\.id).sorted()
    }

    /// Remote relays with members of `cluster` that a broadcast goes to: usable and suspended
    /// ones alike, for the same reason as `relays(subscribedTo:)` (requests choose among the
    /// usable ones only: `pick(cluster:excluding:inFlight:)`).
    package func relays(broadcastingTo cluster: String) -> [NodeID] {
        let usable = byCluster[cluster] ?? []
        guard !suspended.isEmpty else { return usable }
        return usable + suspended.values.filter { ($0.clusters[cluster] ?? 0) > 0 }.map(\.id).sorted()
    }

    /// How many members of `cluster` `relay` (usable or suspended) advertises.
    package func memberCount(of cluster: String, at relay: NodeID) -> UInt32 {
        (relays[relay] ?? suspended[relay])?.clusters[cluster] ?? 0
    }

    /// Usable relays of this network that are gateways to `network`.
    package func gateways(to network: String) -> [NodeID] { byGateway[network] ?? [] }

    /// Whether any relay, usable now or suspended, is a gateway to `network`.
    package func knowsGateway(to network: String, excluding: Set<NodeID> = []) -> Bool {
        gateways(to: network).contains { !excluding.contains($0) }
            || suspended.values.contains { $0.gateways[network] != nil && !excluding.contains($0.id) }
    }

    /// What `network` exports to this one, as its gateways here advertise it.
    package func advertisedExports(of network: String) -> ExportTable? {
        gateways(to: network).first.flatMap { relays[$0]?.gateways[network] }
    }

    /// Every topic some usable relay subscribes to (for federation's interest sets).
    package var subscribedTopics: Dictionary<String, [NodeID]>.Keys { byTopic.keys }

    /// Every pattern some usable relay subscribes to (for federation's interest sets).
    package var subscribedPatterns: Set<String> { relays.values.reduce(into: []) { $0.formUnion($1.patterns) } }

    /// Picks a gateway to `network` by power of two choices over requests in flight (for
    /// requests and tunnel builds, which need no fixed path).
    package mutating func pickGateway(to network: String, excluding: Set<NodeID> = [], inFlight: (NodeID) -> Int) -> NodeID? {
        var candidates = gateways(to: network)
        if !excluding.isEmpty { candidates.removeAll { excluding.contains($0) } }
        return pickTwo(candidates, inFlight: inFlight)
    }

    /// Power of two choices: two distinct random candidates, the one with fewer requests in
    /// flight wins, then the one with the lower `load`, then either; a single candidate as it
    /// is; nil for none.
    package mutating func pickTwo(_ candidates: [NodeID], inFlight: (NodeID) -> Int, load: (NodeID) -> Double = { _ in 0 }) -> NodeID? {
        guard !candidates.isEmpty else { return nil }
        if candidates.count == 1 { return candidates[0] }
        let i = Int(random.next() % UInt64(candidates.count))
        var j = Int(random.next() % UInt64(candidates.count - 1))
        if j >= i { j += 1 }
        let (a, b) = (candidates[i], candidates[j])
        let (fa, fb) = (inFlight(a), inFlight(b))
        if fa != fb { return fa < fb ? a : b }
        let (la, lb) = (load(a), load(b))
        if la != lb { return la < lb ? a : b }
        return random.next() & 1 == 0 ? a : b
    }

    /// Picks the remote relay a request for `cluster` goes to, or nil when none serves it:
    /// relays in this zone first (if the policy says so and one serves the cluster), then
    /// power of two choices — two distinct random candidates, the one with fewer requests in
    /// flight from this relay wins, then the one with fewer members busy per member (load),
    /// then either.
    package mutating func pick(cluster: String, excluding: Set<NodeID> = [], inFlight: (NodeID) -> Int) -> NodeID? {
        var candidates = relays(servingCluster: cluster)
        if !excluding.isEmpty { candidates.removeAll { excluding.contains($0) } }
        guard !candidates.isEmpty else { return nil }
        if policy.preferZone {
            let near = candidates.filter { relays[$0]?.zone == localZone }
            if !near.isEmpty { candidates = near }
        }
        let known = self.relays
        return pickTwo(candidates, inFlight: inFlight, load: { Self.loadPerMember(known[$0], cluster) })
    }

    private static func loadPerMember(_ relay: RemoteRelay?, _ cluster: String) -> Double {
        guard let relay else { return .infinity }
        return Double(relay.load) / Double(max(1, relay.clusters[cluster] ?? 1))
    }
}

/// A small, fast, seeded generator (Steele et al.): routing needs fairness, not secrecy.
struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
