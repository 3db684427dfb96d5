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
    }

    /// A configured gateway that has no link.
    enum Dial: Sendable, Equatable {
        /// A dial is under way.
        case inFlight(failures: Int)
        /// The last `failures` dials failed; the next is due at `at`.
        case waiting(failures: Int, at: NIODeadline)
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

    /// A frame arrived on `link`.
    public mutating func received(_ frame: PeerFrame, on link: UInt64, actions: inout [GatewayLinkAction]) {
        switch (frame, links[link]) {
        case (_, .linked(let node, _)) where !frame.isMembershipOrGateway:
            actions.append(.deliver(node, frame))
        case (.gateway(let network, let rules), .some(let state)):
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
                // Reached: a later loss redials at once, without backoff.
                for address in addresses { dials[address] = nil }
            }
            let isNew = linked[node] == nil
            linked[node] = link
            if isNew { actions.append(.report(.linkUp(node))) }
            actions.append(.linked(node, network: network, exports: rules))
        case (.gateway, nil):
            // A duplicate link that lost (one link per pair) may still deliver its GATEWAY.
            return
        case (.membership, _):
            actions.append(.close(link, reason: "membership does not cross networks", goodbye: true))
        default:
            // Everything waits for GATEWAY: nothing enters before the exports apply to it.
            actions.append(.report(.frameBeforeGateway(frame.kind)))
            actions.append(.close(link, reason: "protocol violation: \(frame.kind) before GATEWAY", goodbye: false))
        }
    }

    /// A link ended. `dialed`: the address this relay dialed for it. A dial that ended before
    /// its GATEWAY was accepted is a failure, and backs off.
    public mutating func linkDown(
        _ link: UInt64, dialed: String?, graceful: Bool, reason: String, now: NIODeadline, actions: inout [GatewayLinkAction]
    ) {
        if let state = links.removeValue(forKey: link), case .linked(let node, _) = state, linked[node] == link {
            linked[node] = nil
            // Even a goodbye ends what the link carried: nothing sent on it can be answered now.
            actions.append(.unlinked(node))
            actions.append(.report(.linkDown(node, graceful: graceful, reason: reason)))
        }
        if let dialed, links.values.contains(where: { $0.addresses.contains(dialed) }) {
            // Another link reaches it (this one lost the duplicate-link tie-break).
            dials[dialed] = nil
        } else if let dialed, case .inFlight(let failures) = dials[dialed] {
            // A dial that failed: try again later, backing off while it keeps failing.
            let failures = failures + 1
            let delay = min(settings.maxRedial.nanoseconds, settings.redial.nanoseconds << min(failures - 1, 16))
            dials[dialed] = .waiting(failures: failures, at: now + .nanoseconds(delay))
            if failures == 1 || failures % 20 == 0 {
                actions.append(.report(.unreachable(address: dialed, failures: failures, reason: reason)))
            }
        }
        reconcile(now: now, actions: &actions)
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
                dials[address] = .inFlight(failures: failures)
                actions.append(.dial(address))
            case .waiting:
                continue
            case nil:
                // Its link is gone: dial again at once.
                dials[address] = .inFlight(failures: 0)
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
