import SkeinFederation
import SkeinMembership

// `/status` and `/members` (the shapes are in Docs/operations.md), assembled here and nowhere
// else, from plain snapshots: the relay loop's, and each transport's links. The shells only
// hand over rows; RelayService takes the snapshot on the event loop and renders it.

/// One established link (a peer link of the mesh, or a gateway link), as `/status` lists it.
public struct LinkRow: Sendable, Equatable {
    public var peer: String
    public var address: String
    public var node: NodeID?
    public var outbound: Bool
    public var keyID: String
    public var cipher: String
}

/// A relay's state at one moment, as `/status` reports it.
struct RelayStatus {
    struct Clients {
        var connections: Int
        var pendingRequests: Int
        var surveys: Int
        var tunnels: Int
        var clusters: [String: Int]
        var topics: [String: Int]
        var patterns: [String: Int]

        init(_ core: RelayCore) {
            connections = core.connectionCount
            pendingRequests = core.pendingRequestCount
            surveys = core.surveyCount
            tunnels = core.tunnelCount
            clusters = core.clusterMembership
            topics = core.topicSubscriptions
            patterns = core.patternSubscriptions
        }
    }

    struct Mesh {
        var name: String
        var node: NodeID
        var address: String
        var zone: String
        var links: [LinkRow]
    }

    /// One federation of a gateway: its configuration, its links, and the loop's view of them.
    struct Federation {
        var network: String
        var listen: String
        var gateways: [String]
        /// Links whose GATEWAY was accepted, by the peer's node id.
        var links: [(node: NodeID, row: LinkRow)]
        /// The loop's view of every gateway link (designated, interest both ways).
        var core: [(node: NodeID, network: String, designated: Bool, theirInterest: Int, ourInterest: Int)]
        var weExport: [ExportRule]
        var theyExport: [ExportRule]?
        var keys: [String]
    }

    var network: String
    var keys: [String]
    var clients: Clients
    var federations: [Federation]
    var mesh: Mesh?

    var json: JSON {
        var fields: [(String, JSON)] = [
            ("relay", .object([
                ("protocol", .string("v1.0-draft2")),
                ("extensions", .array([.string("skein/1"), .string("skein/2")])),
                ("network", .string(network)),
                ("keys", .array(keys.map { .string($0) })),
            ])),
            ("clients", .object([
                ("connections", .int(Int64(clients.connections))),
                ("pendingRequests", .int(Int64(clients.pendingRequests))),
                ("surveys", .int(Int64(clients.surveys))),
                ("tunnels", .int(Int64(clients.tunnels))),
                ("clusters", Self.counts(clients.clusters)),
                ("topics", Self.counts(clients.topics)),
                ("patterns", Self.counts(clients.patterns)),
            ])),
        ]
        if !federations.isEmpty { fields.append(("federation", .array(federations.map(\.json)))) }
        if let mesh {
            fields.append(("mesh", .object([
                ("name", .string(mesh.name)),
                ("node", .string(mesh.node.description)),
                ("address", .string(mesh.address)),
                ("zone", .string(mesh.zone)),
                ("links", .array(mesh.links.map { $0.json })),
            ])))
        }
        return .object(fields)
    }

    static func counts(_ counts: [String: Int]) -> JSON {
        .object(counts.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })
    }
}

extension RelayStatus.Federation {
    var json: JSON {
        let linkRows: [JSON] = links.sorted { $0.node < $1.node }.map { node, row in
            let view = core.first { $0.node == node }
            return .object([
                ("peer", .string(row.peer)),
                ("address", .string(row.address)),
                ("node", .string(node.description)),
                ("direction", .string(row.outbound ? "outbound" : "inbound")),
                ("keyId", .string(row.keyID)),
                ("designated", .bool(view?.designated ?? false)),
                ("theirInterest", .int(Int64(view?.theirInterest ?? 0))),
                ("ourInterest", .int(Int64(view?.ourInterest ?? 0))),
            ])
        }
        return .object([
            ("network", .string(network)),
            ("listen", .string(listen)),
            ("gateways", .array(gateways.map { .string($0) })),
            ("reachable", .bool(!links.isEmpty)),
            ("links", .array(linkRows)),
            ("weExport", .array(weExport.map { .string("\($0)") })),
            ("theyExport", theyExport.map { .array($0.map { .string("\($0)") }) } ?? .null),
            ("keys", .array(keys.map { .string($0) })),
        ])
    }
}

extension LinkRow {
    var json: JSON {
        .object([
            ("peer", .string(peer)),
            ("address", .string(address)),
            ("node", .string(node?.description ?? "")),
            ("direction", .string(outbound ? "outbound" : "inbound")),
            ("keyId", .string(keyID)),
            ("cipher", .string(cipher)),
        ])
    }
}

/// `/members`: every known relay (the shape is in Docs/operations.md).
func membersJSON(_ membership: Membership) -> JSON {
    let members = membership.members.sorted { ($0.name, $0.id) < ($1.name, $1.id) }
    let stats = membership.stats
    return .object([
        ("self", .string(membership.id.description)),
        ("members", .array(members.map { $0.json(isSelf: $0.id == membership.id) })),
        ("stats", .object([
            ("localHealth", .int(Int64(membership.localHealth))),
            ("udpFailedWhileStreamWorked", .int(Int64(stats.udpFailedWhileStreamWorked))),
            ("suspicionsRaised", .int(Int64(stats.suspicionsRaised))),
            ("accusationsWithheld", .int(Int64(stats.accusationsWithheld))),
            ("stalls", .int(Int64(stats.stalls))),
            ("malformedDropped", .int(Int64(stats.malformedDropped))),
            ("refutations", .int(Int64(stats.refutations))),
            ("refutationsWithheld", .int(Int64(stats.refutationsWithheld))),
            ("deathsDeclared", .int(Int64(stats.deathsDeclared))),
            ("deadProbesSent", .int(Int64(stats.deadProbesSent))),
            ("probesSent", .int(Int64(stats.probesSent))),
            ("acksReceived", .int(Int64(stats.acksReceived))),
            ("pushPullsSent", .int(Int64(stats.pushPullsSent))),
            ("pushPullsReceived", .int(Int64(stats.pushPullsReceived))),
            ("datagramsSent", .int(Int64(stats.datagramsSent))),
            ("datagramsReceived", .int(Int64(stats.datagramsReceived))),
        ])),
    ])
}

extension Member {
    func json(isSelf: Bool) -> JSON {
        .object([
            ("name", .string(name)),
            ("node", .string(id.description)),
            ("address", .string(address.description)),
            ("status", .string(status.rawValue)),
            ("incarnation", .int(Int64(clamping: incarnation))),
            ("self", .bool(isSelf)),
            ("zone", metadata.map { .string($0.zone) } ?? .null),
            ("clusters", metadata.map { m in .object(m.clusters.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) }) } ?? .null),
            ("topics", metadata.map { m in .array(m.topics.sorted().map { .string($0) }) } ?? .null),
            ("patterns", metadata.map { m in .array(m.patterns.sorted().map { .string($0) }) } ?? .null),
            ("load", metadata.map { .int(Int64($0.load)) } ?? .null),
            ("gateways", metadata.map { m in
                .object(m.gateways.sorted { $0.key < $1.key }.map { ($0.key, .array($0.value.map { .string("\($0)") })) })
            } ?? .null),
            ("metadataVersion", .int(Int64(clamping: metadataVersion))),
        ])
    }
}
