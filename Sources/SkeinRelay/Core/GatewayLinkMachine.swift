import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinWire

/// The gateway links of one federation (Docs/federation.md §4, §5): a link to every configured
/// gateway of the other network, redialed with backoff while it cannot be reached; GATEWAY first
/// on every link (the other side's network must be the one configured, and nothing enters before
/// its exports apply); membership never crosses. Pure: time is an input, links are named by the
/// shell's link ids, and every input appends what to do to `actions`.
public struct GatewayLinkMachine: Sendable {
    public struct Settings: Sendable {
        /// The other network, and the addresses of its gateways this relay dials.
        public var network: String
        public var gateways: [String]
        /// This relay's network and what it exports to the other one (its GATEWAY frame).
        public var localNetwork: String
        public var exports: [ExportRule]
        /// The first redial after a failed dial; doubled after each failure, up to `maxRedial`.
        public var redial: TimeAmount
        public var maxRedial: TimeAmount

        public init(network: String, gateways: [String], localNetwork: String, exports: [ExportRule], redial: TimeAmount, maxRedial: TimeAmount) {
            self.network = network
            self.gateways = gateways
            self.localNetwork = localNetwork
            self.exports = exports
            self.redial = redial
            self.maxRedial = maxRedial
        }
    }

    /// One link that said HELLO.
    public enum LinkState: Sendable, Equatable {
        /// Waiting for the peer's GATEWAY; any other frame ends the link.
        case awaitingGateway(node: NodeID, addresses: [String])
        /// The relay loop knows the peer's network and exports.
        case linked(node: NodeID, addresses: [String])

        var addresses: [String] {
            switch self {
            case .awaitingGateway(_, let a), .linked(_, let a): a
            }
        }

        var node: NodeID {
            switch self {
            case .awaitingGateway(let n, _), .linked(let n, _): n
            }
        }
    }

    /// Where a configured gateway's link stands.
    enum Dial: Sendable, Equatable {
        /// A dial is under way; `link` is the link it got, once the shell says (`dialed`: it may
        /// be a link that was already open to that address).
        case inFlight(failures: Int, link: UInt64?)
        /// The last `failures` dials failed; the next is due at `at`.
        case waiting(failures: Int, at: NIODeadline)
        /// Its link said GATEWAY at `since`. The failures before it are forgiven once it has
        /// stayed up for `maxRedial`: a link that is accepted and then dropped at once (a peer
        /// that refuses us after GATEWAY) keeps backing off instead of being redialed in a loop.
        case up(failures: Int, since: NIODeadline, link: UInt64)
    }

    public let settings: Settings
    public private(set) var links: [UInt64: LinkState] = [:]
    /// The link that carries each linked peer's traffic.
    public private(set) var linked: [NodeID: UInt64] = [:]
    private var dials: [String: Dial] = [:]
    private var stopped = false

    public init(settings: Settings, now: NIODeadline) {
        self.settings = settings
        for address in settings.gateways { dials[address] = .waiting(failures: 0, at: now) }
    }

    /// When the next dial is due, if one waits.
    public var nextDeadline: NIODeadline? {
        guard !stopped else { return nil }
        return dials.values.compactMap { dial -> NIODeadline? in
            if case .waiting(_, let at) = dial, !settings.gateways.isEmpty { return at }
            return nil
        }.min()
    }

    // MARK: - Inputs

    /// Dials what is due (the timer armed by `.armTimer`, or the start).
    public mutating func timer(now: NIODeadline, actions: inout [GatewayLinkAction]) {
        reconcile(now: now, actions: &actions)
    }

    /// A link finished its HELLO. Our GATEWAY follows our HELLO: the peer learns our network and
    /// what it may ask for.
    public mutating func linkUp(_ link: UInt64, node: NodeID, advertised: String, dialed: String?, now: NIODeadline, actions: inout [GatewayLinkAction]) {
        var addresses = [advertised]
        if let dialed, dialed != advertised { addresses.append(dialed) }
        links[link] = .awaitingGateway(node: node, addresses: addresses)
        actions.append(.send(link, .gateway(network: settings.localNetwork, exports: settings.exports)))
    }

    /// The shell carried out `.dial(address)`: `link` is the link it got (new, or one already open).
    public mutating func dialed(_ address: String, link: UInt64) {
        if case .inFlight(let failures, nil) = dials[address] { dials[address] = .inFlight(failures: failures, link: link) }
    }

    /// The peer's GATEWAY on `link`: its network and what it exports to this one.
    public mutating func gateway(network: String, exports rules: [ExportRule], on link: UInt64, now: NIODeadline, actions: inout [GatewayLinkAction]) {
        // A duplicate link that lost (one link per pair) may still deliver its GATEWAY.
        guard let state = links[link] else { return }
        guard network == settings.network else {
            actions.append(.report(.wrongNetwork(said: network)))
            actions.append(.close(link, reason: "this link is for network \(settings.network), not \(network)", goodbye: true))
            return
        }
        let node: NodeID
        switch state {
        case .awaitingGateway(let n, let addresses), .linked(let n, let addresses):
            node = n
            links[link] = .linked(node: n, addresses: addresses)
        }
        for address in gatewayAddresses(of: link) {
            switch dials[address] {
            case .inFlight(let failures, _), .waiting(let failures, _), .up(let failures, _, _):
                dials[address] = .up(failures: failures, since: now, link: link)
            case nil:
                dials[address] = .up(failures: 0, since: now, link: link)
            }
        }
        let isNew = linked[node] == nil
        linked[node] = link
        if isNew { actions.append(.report(.linkUp(node))) }
        actions.append(.linked(node, network: network, exports: rules))
    }

    /// Any other frame on `link` (GATEWAY goes to `gateway`). `linkEnded`: the link has ended
    /// and only delivers what was in flight (it lingers after a GOODBYE, or lost the tie-break).
    public mutating func received(_ frame: PeerFrame, on link: UInt64, linkEnded: Bool = false, actions: inout [GatewayLinkAction]) {
        switch (frame, links[link]) {
        case (.gateway, _):
            return
        case (_, nil) where linkEnded:
            // Its peer is reached through another link, or not at all: nothing to check or to
            // pass on. (A link that is still open and unknown has not said HELLO: a violation.)
            return
        case (.membership, _):
            actions.append(.close(link, reason: "membership does not cross networks", goodbye: true))
        case (_, .linked(let node, _)):
            actions.append(.deliver(node, frame))
        default:
            // Everything waits for GATEWAY: nothing enters before the exports apply to it.
            actions.append(.report(.frameBeforeGateway(frame.kind)))
            actions.append(.close(link, reason: "protocol violation: \(frame.kind) before GATEWAY", goodbye: false))
        }
    }

    /// A link ended. `dialed`: the address this relay dialed for it; `node`: the peer, if the
    /// handshake proved it. A dial that ended before its GATEWAY was accepted is a failure and
    /// backs off; so is a link lost soon after it. A link that lost the duplicate-link tie-break
    /// to another link of the same peer is none: that link stands for its addresses now.
    public mutating func linkDown(
        _ link: UInt64, dialed: String?, node: NodeID? = nil, graceful: Bool, reason: String, now: NIODeadline,
        actions: inout [GatewayLinkAction]
    ) {
        let addresses = gatewayAddresses(of: link, dialed: dialed)
        let sibling = node.flatMap { node in links.first { $0.key != link && $0.value.node == node }?.key }
        if let state = links.removeValue(forKey: link), case .linked(let node, _) = state, linked[node] == link {
            linked[node] = nil
            // Even a goodbye ends what the link carried: nothing sent on it can be answered now.
            actions.append(.unlinked(node))
            actions.append(.report(.linkDown(node, graceful: graceful, reason: reason)))
        }
        let covered = Set(links.values.flatMap(\.addresses))
        for address in addresses {
            let failures: Int
            switch dials[address] {
            case .up(_, _, let up) where up != link:
                continue  // another link of it is up
            case _ where covered.contains(address):
                // Another link reaches it (this one lost the duplicate-link tie-break).
                dials[address] = nil
                continue
            case .inFlight(let before, _) where sibling != nil, .up(let before, _, _) where sibling != nil, .waiting(let before, _) where sibling != nil:
                // The same peer's other link (it may advertise another address) stands for it.
                dials[address] = .up(failures: before, since: now, link: sibling!)
                continue
            case .up(let before, let since, _):
                guard now - since < settings.maxRedial else {
                    dials[address] = nil  // it was up long enough: redial at once
                    continue
                }
                failures = before + 1
            case .inFlight(let before, _):
                failures = before + 1
            case .waiting, nil:
                continue
            }
            // Try again later, backing off while it keeps failing.
            let delay = min(settings.maxRedial.nanoseconds, settings.redial.nanoseconds << min(failures - 1, 16))
            dials[address] = .waiting(failures: failures, at: now + .nanoseconds(delay))
            if failures == 1 || failures % 20 == 0 {
                actions.append(.report(.unreachable(address: address, failures: failures, reason: reason)))
            }
        }
        reconcile(now: now, actions: &actions)
    }

    /// The configured gateways `link` stands for: the addresses it advertised or was dialed as,
    /// and any dial that got this link.
    private func gatewayAddresses(of link: UInt64, dialed: String? = nil) -> [String] {
        let own = Set((links[link]?.addresses ?? []) + (dialed.map { [$0] } ?? []))
        return settings.gateways.filter { address in
            if own.contains(address) { return true }
            switch dials[address] {
            case .inFlight(_, link?), .up(_, _, link): return true
            default: return false
            }
        }
    }

    /// Stops dialing (the relay stops).
    public mutating func stop() {
        stopped = true
    }

    // MARK: - Steps

    /// Dials every configured gateway that has no link and whose backoff is over; arms the timer
    /// for the next one.
    private mutating func reconcile(now: NIODeadline, actions: inout [GatewayLinkAction]) {
        guard !stopped else { return }
        let covered = Set(links.values.flatMap(\.addresses))
        for address in settings.gateways where !covered.contains(address) {
            switch dials[address] {
            case .inFlight:
                continue
            case .waiting(let failures, let at) where at <= now:
                dials[address] = .inFlight(failures: failures, link: nil)
                actions.append(.dial(address))
            case .waiting:
                continue
            case .up(_, _, let link) where links[link] != nil:
                continue  // its link is up under another name
            case .up(let failures, _, _):
                dials[address] = .inFlight(failures: failures, link: nil)
                actions.append(.dial(address))
            case nil:
                // Its link is gone: dial again at once.
                dials[address] = .inFlight(failures: 0, link: nil)
                actions.append(.dial(address))
            }
        }
        if let next = nextDeadline { actions.append(.armTimer(next)) }
    }
}

/// What the gateway shell does for its machine.
public enum GatewayLinkAction: Sendable, Equatable {
    case dial(String)
    case send(UInt64, PeerFrame)
    case close(UInt64, reason: String, goodbye: Bool)
    case armTimer(NIODeadline)
    /// Inputs to the relay loop: a peer's GATEWAY, a link that ended, a frame for the core.
    case linked(NodeID, network: String, exports: [ExportRule])
    case unlinked(NodeID)
    case deliver(NodeID, PeerFrame)
    case report(GatewayLinkEvent)
}

/// What the gateway links report, for the log.
public enum GatewayLinkEvent: Sendable, Equatable {
    case linkUp(NodeID)
    case linkDown(NodeID, graceful: Bool, reason: String)
    case wrongNetwork(said: String)
    case frameBeforeGateway(PeerFrame.Kind)
    case unreachable(address: String, failures: Int, reason: String)
}

extension PeerFrame {
    var isMembershipOrGateway: Bool {
        switch kind {
        case .membership, .gateway: true
        default: false
        }
    }
}
