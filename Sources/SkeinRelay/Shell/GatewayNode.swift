import Logging
import Metrics
import NIOCore
import SkeinCrypto
import SkeinFederation
import SkeinMembership
import SkeinWire

/// One federation of a gateway relay, as `skein relay` configures it (Docs/federation.md §3).
public struct GatewayConfiguration: Sendable {
    public var spec: FederationSpec
    /// The federation keyring (from `spec.keyFiles`).
    public var keyring: Keyring
    public var links = GatewayConfiguration.linkSettings
    /// The first redial after a failed dial; doubled after each failure, up to `maxRedial`.
    public var redial: TimeAmount = .milliseconds(500)
    public var maxRedial: TimeAmount = .seconds(5)

    public init(spec: FederationSpec, keyring: Keyring) {
        self.spec = spec
        self.keyring = keyring
    }

    /// Gateway links are watched closely and never closed for being idle: whether the other
    /// network is reachable is exactly what they are for (Docs/federation.md §4).
    public static var linkSettings: PeerLinkSettings {
        var settings = PeerLinkSettings()
        settings.keepaliveInterval = .seconds(1)
        settings.idleTimeout = .seconds(3)
        settings.idleClose = .hours(24 * 365 * 100)
        return settings
    }
}

/// The shell of one federation on a gateway: listens for the other network's gateways, keeps a
/// link to each configured one (redialing with backoff), checks that each link says it belongs to
/// that network (GATEWAY) before anything else, and passes everything else to the relay core.
/// All state lives on the relay's event loop.
public final class GatewayNode: LinkTransport, @unchecked Sendable {
    // @unchecked: all mutable state is confined to `eventLoop`.
    public let configuration: GatewayConfiguration
    public let links: PeerLinks
    public let localNetwork: String
    let eventLoop: any EventLoop
    let logger: Logger
    /// Strong, not `unowned`: an unowned load costs an atomic check per peer frame. The cycle
    /// with the host's transports is broken when the relay stops (`ClientServer.detachTransports`).
    private let sink: any RelayInputSink
    private let exports: [ExportRule]
    /// Links whose GATEWAY arrived: the relay core knows them.
    @exclusivity(unchecked) private var linked: [NodeID: PeerLink] = [:]
    @exclusivity(unchecked) private var dialing: [String: (failures: Int, next: NIODeadline)] = [:]
    @exclusivity(unchecked) private var ticker: RepeatedTask?
    @exclusivity(unchecked) private var stopped = false

    public var network: String { configuration.spec.network }
    /// `skein_federation_links{network}`: established gateway links.
    private var linksGauge: Recorder { Recorder(label: "skein_federation_links", dimensions: [("network", network)], aggregate: false) }

    /// Listens on the federation's `listen` address and starts dialing its gateways.
    static func start(
        _ configuration: GatewayConfiguration, localNetwork: String, exports: ExportTable, nodeID: [UInt8], name: String,
        sink: any RelayInputSink, eventLoop: any EventLoop, logger: Logger
    ) async throws -> GatewayNode {
        let spec = configuration.spec
        guard let listen = spec.listen, let (host, port) = splitHostPort(listen) else {
            throw MeshStartupError.badAddress(spec.listen ?? "")
        }
        var tagged = logger
        tagged[metadataKey: "federation"] = "\(spec.network)"
        let logger = tagged
        let links = PeerLinks(
            identity: PeerIdentity(network: NetworkName.federation(localNetwork, spec.network), nodeID: nodeID, name: name, address: listen),
            keyring: configuration.keyring, settings: configuration.links, eventLoop: eventLoop, logger: logger)
        do {
            _ = try await links.listen(host: host, port: port)
        } catch {
            throw MeshStartupError.cannotBind("gateway links for \(spec.network) on \(listen) (--federation-listen): \(error)")
        }
        let node = try await eventLoop.submit {
            let node = GatewayNode(
                configuration, localNetwork: localNetwork, exports: exports.rules, links: links, sink: sink, eventLoop: eventLoop, logger: logger)
            node.begin()
            return node
        }.get()
        logger.info("gateway listening", metadata: ["address": "\(listen)", "gateways": "\(spec.gateways)"])
        return node
    }

    private init(
        _ configuration: GatewayConfiguration, localNetwork: String, exports: [ExportRule], links: PeerLinks,
        sink: any RelayInputSink, eventLoop: any EventLoop, logger: Logger
    ) {
        self.configuration = configuration
        self.localNetwork = localNetwork
        self.exports = exports
        self.links = links
        self.sink = sink
        self.eventLoop = eventLoop
        self.logger = logger
    }

    private func begin() {
        links.onLinkUp = { [unowned self] link in
            // Our GATEWAY follows our HELLO: the peer learns our network and what it may ask for.
            link.send(.gateway(network: self.localNetwork, exports: self.exports))
        }
        links.onFrame = { [unowned self] frame, link in self.frame(frame, link) }
        links.onReadComplete = { [unowned self] _ in self.sink.inputsComplete() }
        links.onWritable = { [unowned self] link in
            if let node = self.node(of: link) { self.sink.input(.peerWritability(node, writable: true)) }
        }
        links.onUnwritable = { [unowned self] link in
            if let node = self.node(of: link) { self.sink.input(.peerWritability(node, writable: false)) }
        }
        links.onLinkDown = { [unowned self] link in self.linkDown(link) }
        ticker = eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(250)) { [unowned self] _ in
            self.dialWhatIsMissing()
        }
    }

    private func node(of link: PeerLink) -> NodeID? {
        guard let bytes = link.peerNodeID else { return nil }
        let node = NodeID(bytes: bytes)
        return linked[node] === link ? node : nil
    }

    // MARK: - Links

    /// Dials every configured gateway that has no link (established or on its way), unless it is
    /// backing off after failures.
    private func dialWhatIsMissing() {
        guard !stopped else { return }
        let now = NIODeadline.now()
        for address in configuration.spec.gateways where !links.hasLink(to: address) {
            if let state = dialing[address], state.next > now { continue }
            _ = links.link(to: address)
        }
    }

    private func frame(_ frame: PeerFrame, _ link: PeerLink) {
        guard let bytes = link.peerNodeID else { return }
        let node = NodeID(bytes: bytes)
        switch frame {
        case .gateway(let network, let rules):
            // A duplicate link that lost (PeerLinks keeps one per pair) may still deliver its GATEWAY.
            guard !link.isClosed else { return }
            guard network == configuration.spec.network else {
                logger.warning(
                    "gateway link refused: the peer says it is a gateway of another network",
                    metadata: ["expected": "\(configuration.spec.network)", "said": "\(network)", "peer": "\(link.peerName ?? "?")"])
                link.close(reason: "this link is for network \(configuration.spec.network), not \(network)", goodbye: true)
                return
            }
            if let address = link.dialedAddress ?? link.advertisedAddress { dialing[address] = nil }
            let isNew = linked[node] == nil
            linked[node] = link
            if isNew {
                logger.info("gateway link up", metadata: ["peer": "\(link.peerName ?? "?")", "address": "\(link.advertisedAddress ?? "?")", "node": "\(node)"])
                linksGauge.record(linked.count)
            }
            sink.input(.gatewayLinked(node, network: network, exports: rules))
        case .membership:
            link.close(reason: "membership does not cross networks", goodbye: true)
        default:
            guard linked[node] === link else {
                // Everything waits for GATEWAY: nothing enters before the exports apply to it.
                logger.warning("gateway link broken: a frame before GATEWAY", metadata: ["kind": "\(frame.kind)", "peer": "\(link.peerName ?? "?")"])
                link.close(reason: "protocol violation: \(frame.kind) before GATEWAY", goodbye: false)
                return
            }
            sink.inputDeferred(.gatewayFrame(node, frame))
        }
    }

    private func linkDown(_ link: PeerLink) {
        if let bytes = link.peerNodeID, linked[NodeID(bytes: bytes)] === link {
            let node = NodeID(bytes: bytes)
            linked[node] = nil
            linksGauge.record(linked.count)
            logger.log(
                level: link.closedGracefully ? .info : .warning, "gateway link down",
                metadata: ["peer": "\(link.peerName ?? "?")", "reason": "\(link.closeReason ?? "closed")"])
            // Even a goodbye ends what the link carried: nothing sent on it can be answered now.
            sink.input(.gatewayUnlinked(node))
        }
        if !link.isEstablished, let address = link.dialedAddress, configuration.spec.gateways.contains(address) {
            // A dial that failed: try again later, backing off while it keeps failing.
            let failures = (dialing[address]?.failures ?? 0) + 1
            let delay = min(configuration.maxRedial.nanoseconds, configuration.redial.nanoseconds << min(failures - 1, 16))
            dialing[address] = (failures, .now() + .nanoseconds(delay))
            if failures == 1 || failures % 20 == 0 {
                logger.notice("cannot reach a gateway", metadata: ["address": "\(address)", "failures": "\(failures)", "reason": "\(link.closeReason ?? "?")"])
            }
        }
    }

    /// Sends a frame to a linked gateway; false if there is no link to it.
    func send(_ frame: PeerFrame, toNode node: NodeID) -> Bool {
        guard let link = linked[node], !link.isClosed else { return false }
        link.send(frame)
        return true
    }

    /// Takes a new federation keyring (SIGHUP).
    func update(keyring: Keyring) {
        links.update(keyring: keyring)
    }

    /// Closes every gateway link with a goodbye and stops listening and dialing.
    func close() async {
        try? await eventLoop.submit {
            self.stopped = true
            self.ticker?.cancel()
        }.get()
        await links.closeAll(reason: "relay stopped")
    }

    // MARK: - Reporting

    /// This federation as `/status` reports it (Docs/operations.md).
    func statusJSON(
        core: [(node: NodeID, network: String, designated: Bool, theirInterest: Int, ourInterest: Int)], theirExports: [ExportRule]?
    ) -> JSON {
        eventLoop.preconditionInEventLoop()
        let spec = configuration.spec
        let linkRows: [JSON] = linked.keys.sorted().map { node in
            let link = linked[node]!
            let row = core.first { $0.node == node }
            return .object([
                ("peer", .string(link.peerName ?? "")),
                ("address", .string(link.advertisedAddress ?? link.dialedAddress ?? "")),
                ("node", .string(node.description)),
                ("direction", .string(link.isInitiator ? "outbound" : "inbound")),
                ("keyId", .string(link.keyID?.description ?? "")),
                ("designated", .bool(row?.designated ?? false)),
                ("theirInterest", .int(Int64(row?.theirInterest ?? 0))),
                ("ourInterest", .int(Int64(row?.ourInterest ?? 0))),
            ])
        }
        return .object([
            ("network", .string(spec.network)),
            ("listen", .string(spec.listen ?? "")),
            ("gateways", .array(spec.gateways.map { .string($0) })),
            ("reachable", .bool(!linked.isEmpty)),
            ("links", .array(linkRows)),
            ("weExport", .array(exports.map { .string("\($0)") })),
            ("theyExport", theirExports.map { .array($0.map { .string("\($0)") }) } ?? .null),
            ("keys", .array(links.keyringIDs.map { .string($0) })),
        ])
    }
}

extension PeerLinks {
    /// Whether a link to the relay listening on `address` is established or being opened.
    func hasLink(to address: String) -> Bool {
        eventLoop.preconditionInEventLoop()
        return establishedLinks.contains { $0.advertisedAddress == address || $0.dialedAddress == address }
            || pendingDial(to: address)
    }

    var keyringIDs: [String] { keyring.keyIDs.map(\.description) }
}
