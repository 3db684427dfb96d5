import SkeinFederation
import SkeinMembership
import SkeinRouting

/// A gateway of another network this relay holds a gateway link to.
struct ForeignGateway {
    var network: String
    /// What its network exports to this one (its GATEWAY frame).
    var exports: ExportTable
    /// Topics of this network its network subscribes to through this link (its INTEREST).
    var interest: Set<String> = []
    /// `skein/2` patterns of this network's topics its network subscribes to through this link
    /// (each event is checked against this network's exports before it crosses).
    var patterns: Set<String> = []
}

/// The gateway links of other networks this relay holds (Docs/federation.md): each link's
/// network, what that network exports to this one and its interest here; per network, the links
/// in node id order (the first is the designated link). `version` changes whenever a link comes
/// or goes, so routes cached for `name@network` expire. Pure.
struct ForeignGateways {
    private(set) var all: [NodeID: ForeignGateway] = [:]
    private var byNetwork: [String: [NodeID]] = [:]
    /// Every link's `patterns`, indexed.
    private var patternIndex = SubjectTrie<NodeID>()
    private(set) var version: UInt64 = 0

    var isEmpty: Bool { all.isEmpty }

    subscript(node: NodeID) -> ForeignGateway? { all[node] }

    /// Established gateway links to `network`, in node id order.
    func links(to network: String) -> [NodeID] { byNetwork[network] ?? [] }

    /// The link ordered traffic to `network` takes: to the remote gateway with the lowest node id.
    func designatedLink(to network: String) -> NodeID? { byNetwork[network]?.first }

    /// `node`, a gateway of `network`, said GATEWAY with what its network exports (again, after
    /// a change, keeping the interest it registered).
    mutating func link(_ node: NodeID, network: String, exports: ExportTable) {
        if let previous = all[node] {
            byNetwork[previous.network]?.removeAll { $0 == node }
            if byNetwork[previous.network]?.isEmpty == true { byNetwork[previous.network] = nil }
            all[node] = ForeignGateway(network: network, exports: exports, interest: previous.interest, patterns: previous.patterns)
        } else {
            all[node] = ForeignGateway(network: network, exports: exports)
        }
        byNetwork[network, default: []].append(node)
        byNetwork[network]!.sort()
        version &+= 1
    }

    /// The link to `node` ended; returns what it was.
    mutating func unlink(_ node: NodeID) -> ForeignGateway? {
        guard let gateway = all.removeValue(forKey: node) else { return nil }
        for pattern in gateway.patterns { patternIndex.remove(pattern, node) }
        byNetwork[gateway.network]?.removeAll { $0 == node }
        if byNetwork[gateway.network]?.isEmpty == true { byNetwork[gateway.network] = nil }
        version &+= 1
        return gateway
    }

    /// The topics and patterns `node`'s network subscribes to through it (its INTEREST).
    mutating func setInterest(_ node: NodeID, _ topics: Set<String>, patterns: Set<String>) {
        guard let old = all[node] else { return }
        all[node]!.interest = topics
        all[node]!.patterns = patterns
        for pattern in old.patterns.subtracting(patterns) { patternIndex.remove(pattern, node) }
        for pattern in patterns.subtracting(old.patterns) { patternIndex.insert(pattern, node) }
    }

    /// The links whose network subscribes to `topic`: by name, or by a matching pattern, each
    /// link once. Mutating only for the pattern index's cache.
    mutating func interested(in topic: String) -> [NodeID] {
        var out: [NodeID] = []
        for (node, gateway) in all where gateway.interest.contains(topic) { out.append(node) }
        if !patternIndex.isEmpty {
            for node in patternIndex.values(matching: topic) where !out.contains(node) { out.append(node) }
        }
        return out
    }
}
