import SkeinFederation

/// What a relay offers the mesh: its zone tag, the clusters and topics its local connections
/// serve, and a load figure. Versioned: gossip carries only the version, the body is pulled over
/// the stream channel (see `Docs/membership.md`, "Metadata").
public struct MemberMetadata: Equatable, Sendable {
    public var zone: String
    /// Cluster name → number of local member connections.
    public var clusters: [String: UInt32]
    public var topics: Set<String>
    public var load: UInt32
    /// The other networks this relay is a gateway to, each with what it exports to this network
    /// (Docs/federation.md §6). Empty for a relay that is no gateway.
    public var gateways: [String: [ExportRule]]
    /// `skein/2` subscription patterns of its local connections (`orders.*`, `metrics.>@us`),
    /// beside the literal `topics`.
    public var patterns: Set<String>

    public init(
        zone: String = "", clusters: [String: UInt32] = [:], topics: Set<String> = [], load: UInt32 = 0,
        gateways: [String: [ExportRule]] = [:], patterns: Set<String> = []
    ) {
        self.zone = zone
        self.clusters = clusters
        self.topics = topics
        self.load = load
        self.gateways = gateways
        self.patterns = patterns
    }

    /// Layout: `u8 format | str zone | varint nClusters | (str name, varint count)* |
    /// varint nTopics | str topic* | varint load | varint nGateways | (str network, varint nRules,
    /// (u8 kinds, str pattern)*)*`, and in format 2 only `varint nPatterns | str pattern*`; names
    /// sorted so equal values encode equally. Format 1 is written while there is no pattern.
    /// Throws when a string exceeds `MembershipWireLimits.maxMetadataStringBytes` or the whole exceeds `limit`.
    public func encoded(limit: Int) throws(MembershipError) -> [UInt8] {
        var writer = ByteWriter(capacity: 64)
        writer.u8(patterns.isEmpty ? 1 : 2)
        try Self.checked(zone)
        writer.string(zone)
        writer.varint(UInt64(clusters.count))
        for name in clusters.keys.sorted() {
            try Self.checked(name)
            writer.string(name)
            writer.varint(UInt64(clusters[name] ?? 0))
        }
        writer.varint(UInt64(topics.count))
        for topic in topics.sorted() {
            try Self.checked(topic)
            writer.string(topic)
        }
        writer.varint(UInt64(load))
        writer.varint(UInt64(gateways.count))
        for network in gateways.keys.sorted() {
            try Self.checked(network)
            writer.string(network)
            let rules = gateways[network] ?? []
            writer.varint(UInt64(rules.count))
            for rule in rules {
                try Self.checked(rule.pattern)
                writer.u8(rule.kinds.rawValue)
                writer.string(rule.pattern)
            }
        }
        if !patterns.isEmpty {
            writer.varint(UInt64(patterns.count))
            for pattern in patterns.sorted() {
                try Self.checked(pattern)
                writer.string(pattern)
            }
        }
        guard writer.bytes.count <= limit else {
            throw .metadataTooLarge(size: writer.bytes.count, limit: limit)
        }
        return writer.bytes
    }

    /// Nil for anything malformed or longer than `limit` bytes.
    public static func decode(_ bytes: [UInt8], limit: Int) -> MemberMetadata? {
        guard bytes.count <= limit else { return nil }
        var reader = ByteReader(bytes)
        guard let format = reader.u8(), format == 1 || format == 2, let zone = reader.string(max: MembershipWireLimits.maxMetadataStringBytes),
              let clusterCount = reader.length(max: reader.remaining / 2)
        else { return nil }
        var clusters: [String: UInt32] = [:]
        for _ in 0..<clusterCount {
            guard let name = reader.string(max: MembershipWireLimits.maxMetadataStringBytes),
                  let count = reader.varint(), count <= UInt64(UInt32.max),
                  clusters.updateValue(UInt32(count), forKey: name) == nil
            else { return nil }
        }
        guard let topicCount = reader.length(max: reader.remaining) else { return nil }
        var topics = Set<String>()
        for _ in 0..<topicCount {
            guard let topic = reader.string(max: MembershipWireLimits.maxMetadataStringBytes), topics.insert(topic).inserted
            else { return nil }
        }
        guard let load = reader.varint(), load <= UInt64(UInt32.max),
              let gatewayCount = reader.length(max: reader.remaining / 2)
        else { return nil }
        var gateways: [String: [ExportRule]] = [:]
        for _ in 0..<gatewayCount {
            guard let network = reader.string(max: MembershipWireLimits.maxMetadataStringBytes),
                  let ruleCount = reader.length(max: reader.remaining / 2), gateways[network] == nil
            else { return nil }
            var rules: [ExportRule] = []
            for _ in 0..<ruleCount {
                guard let kinds = reader.u8(), let pattern = reader.string(max: MembershipWireLimits.maxMetadataStringBytes) else { return nil }
                rules.append(ExportRule(kinds: ExportKinds(rawValue: kinds), pattern: pattern))
            }
            gateways[network] = rules
        }
        var patterns = Set<String>()
        if format == 2 {
            guard let patternCount = reader.length(max: reader.remaining), patternCount > 0 else { return nil }
            for _ in 0..<patternCount {
                guard let pattern = reader.string(max: MembershipWireLimits.maxMetadataStringBytes), patterns.insert(pattern).inserted
                else { return nil }
            }
        }
        guard reader.isAtEnd else { return nil }
        return MemberMetadata(
            zone: zone, clusters: clusters, topics: topics, load: UInt32(load), gateways: gateways, patterns: patterns)
    }

    private static func checked(_ string: String) throws(MembershipError) {
        guard string.utf8.count <= MembershipWireLimits.maxMetadataStringBytes else {
            throw .metadataStringTooLong(string.utf8.count)
        }
    }
}

public enum MembershipError: Error, Equatable, Sendable {
    /// Encoded metadata is larger than `MembershipSettings.maxMetadataBytes`.
    case metadataTooLarge(size: Int, limit: Int)
    /// A zone, cluster or topic name is longer than `MembershipWireLimits.maxMetadataStringBytes`.
    case metadataStringTooLong(Int)
    /// The member name is longer than `MembershipWireLimits.maxNameBytes`.
    case nameTooLong(Int)
    /// The host is longer than `MembershipWireLimits.maxHostBytes`.
    case hostTooLong(Int)
}
