import SkeinMembership

/// Which link carries a relay's traffic (Docs/peer-protocol.md §5.4): at most one per peer, found
/// by the peer's node id or by the address it listens on, and the dials under way. It decides
/// the duplicate-link tie-break and which queued frames move where. Pure; `Link` is the shell's
/// handle of a link (tests use any value).
public struct PeerLinkIndex<Link> {
    public enum Decision {
        /// Move every frame queued on `from` to `into` (which seals them with its own session).
        case adopt(from: Link, into: Link)
        /// Close `link`: with GOODBYE (a duplicate) or at once (a dial that never finished).
        case close(Link, reason: String, goodbye: Bool)
    }

    private struct Entry {
        var id: UInt64
        var link: Link
        /// The node id of the relay that dialed the link (this relay's or the peer's).
        var initiator: [UInt8]
        /// The address this relay dialed, if it did (it may name the peer differently from the
        /// address the peer advertises).
        var dialed: String?
    }

    private var byNode: [NodeID: Entry] = [:]
    private var byAddress: [String: Entry] = [:]
    /// Dials under way, by the address dialed, in the order they were made.
    private var dials: [String: [Dial]] = [:]

    private struct Dial {
        var id: UInt64
        var link: Link
        var stage: Stage
        enum Stage { case handshaking, awaitingHello }
    }

    public init() {}

    /// The link that carries traffic to `node`.
    public func link(toNode node: NodeID) -> Link? { byNode[node]?.link }

    /// The link to the relay listening on `address`, or a dial to it under way.
    public func link(toAddress address: String) -> Link? {
        byAddress[address]?.link ?? dials[address]?.first?.link
    }

    public var count: Int { byNode.count }
    public var links: [Link] { byNode.values.map(\.link) }

    /// A dial to `address` started.
    public mutating func dialed(_ id: UInt64, _ link: Link, address: String) {
        dials[address, default: []].append(Dial(id: id, link: link, stage: .handshaking))
    }

    /// Link `id` finished its handshake; its HELLO comes next. A dial that got this far is no
    /// longer superseded by another link from the same relay: the tie-break decides between them.
    public mutating func established(_ id: UInt64) {
        for address in Array(dials.keys) {
            guard let at = dials[address]!.firstIndex(where: { $0.id == id }) else { continue }
            dials[address]![at].stage = .awaitingHello
        }
    }

    /// `link` (established, its handshake proved `node`) said HELLO: the peer listens on
    /// `address`. Returns whether the link now carries the peer's traffic; `decisions` says
    /// what to do with the links it replaces.
    public mutating func hello(
        _ id: UInt64, _ link: Link, node: NodeID, initiator: [UInt8], address: String, decisions: inout [Decision]
    ) -> Bool {
        let dialed = dials.first { $0.value.contains { $0.id == id } }?.key
        let entry = Entry(id: id, link: link, initiator: initiator, dialed: dialed)
        // Two relays that dial each other at once end up with two links: both sides keep the one
        // whose initiator has the lower node id, so they agree without talking.
        var replaced: UInt64?
        if let existing = byNode[node], existing.id != id {
            let keepNew = initiator.lexicographicallyPrecedes(existing.initiator)
            let (winner, loser) = keepNew ? (entry, existing) : (existing, entry)
            decisions.append(.adopt(from: loser.link, into: winner.link))
            decisions.append(.close(loser.link, reason: "duplicate link", goodbye: true))
            guard keepNew else {
                removeDial(id)
                return false
            }
            replaced = existing.id
        }
        byNode[node] = entry
        if let previous = byAddress[address], previous.id != id, previous.id != replaced {
            decisions.append(.adopt(from: previous.link, into: link))
        }
        byAddress[address] = entry
        if let dialed, dialed != address { byAddress[dialed] = entry }
        removeDial(id)
        // Frames queued on a dial to this address that is still handshaking now travel on this
        // link (a dial already established meets this one in the tie-break, at its HELLO).
        for address in Set([address, dialed].compactMap { $0 }) {
            for other in dials[address] ?? [] where other.stage == .handshaking {
                decisions.append(.adopt(from: other.link, into: link))
                decisions.append(.close(other.link, reason: "superseded by an established link", goodbye: false))
                removeDial(other.id, from: address)
            }
        }
        return true
    }

    /// Link `id` ended (whatever its state). Returns whether it was the peer's link.
    @discardableResult
    public mutating func closed(_ id: UInt64, node: NodeID?, address: String?, dialed: String?) -> Bool {
        if let dialed {
            removeDial(id, from: dialed)
            // A link that lost the tie-break after it had been found by the name it was dialed
            // as: that entry goes too, or the name would point at a closed link.
            if byAddress[dialed]?.id == id { byAddress[dialed] = nil }
        }
        if let address, byAddress[address]?.id == id { byAddress[address] = nil }
        guard let node, let entry = byNode[node], entry.id == id else { return false }
        if let dialed = entry.dialed, byAddress[dialed]?.id == id { byAddress[dialed] = nil }
        byNode[node] = nil
        return true
    }

    private mutating func removeDial(_ id: UInt64) {
        for address in Array(dials.keys) where dials[address]!.contains(where: { $0.id == id }) { removeDial(id, from: address) }
    }

    private mutating func removeDial(_ id: UInt64, from address: String) {
        dials[address]?.removeAll { $0.id == id }
        if dials[address]?.isEmpty == true { dials[address] = nil }
    }
}
