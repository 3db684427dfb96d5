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
    /// GATEWAY first, redials and backoff: every decision about this federation's links.
    @exclusivity(unchecked) private var machine: GatewayLinkMachine
    /// Links that said HELLO, by id: the machine names links by id.
    @exclusivity(unchecked) private var byID: [UInt64: PeerLink] = [:]
    /// The link of each linked peer (the machine's `linked`, as links): frames to a peer go here.
    @exclusivity(unchecked) private var linked: [NodeID: PeerLink] = [:]
    @exclusivity(unchecked) private var timer: Scheduled<Void>?

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
        self.machine = GatewayLinkMachine(
            settings: GatewayLinkMachine.Settings(
                network: configuration.spec.network, gateways: configuration.spec.gateways, localNetwork: localNetwork,
                exports: exports, redial: configuration.redial, maxRedial: configuration.maxRedial),
            now: .now())
    }

    private func begin() {
        links.onLinkUp = { [unowned self] link in
            guard let node = link.peerNode else { return }
            self.byID[link.id] = link
            var actions: [GatewayLinkAction] = []
            self.machine.linkUp(link.id, node: node, advertised: link.advertisedAddress ?? "", dialed: link.dialedAddress, now: .now(), actions: &actions)
            self.perform(actions, link: link)
        }
        links.onFrame = { [unowned self] frame, link in
            var actions: [GatewayLinkAction] = []
            if case .gateway(let network, let exports) = frame {
                self.machine.gateway(network: network, exports: exports, on: link.id, now: .now(), actions: &actions)
            } else {
                self.machine.received(frame, on: link.id, linkEnded: link.isClosed, actions: &actions)
            }
            self.perform(actions, link: link)
        }
        links.onReadComplete = { [unowned self] _ in self.sink.inputsComplete() }
        links.onWritable = { [unowned self] link in
            if let node = self.node(of: link) { self.sink.input(.peerWritability(node, writable: true)) }
        }
        links.onUnwritable = { [unowned self] link in
            if let node = self.node(of: link) { self.sink.input(.peerWritability(node, writable: false)) }
        }
        links.onLinkDown = { [unowned self] link in
            self.byID[link.id] = nil
            var actions: [GatewayLinkAction] = []
            self.machine.linkDown(
                link.id, dialed: link.dialedAddress, node: link.peerNode, graceful: link.closedGracefully,
                reason: link.closeReason ?? "closed", now: .now(), actions: &actions)
            self.perform(actions, link: link)
        }
        var actions: [GatewayLinkAction] = []
        machine.timer(now: .now(), actions: &actions)
        perform(actions, link: nil)
    }

    private func node(of link: PeerLink) -> NodeID? {
        guard let node = link.peerNode, linked[node] === link else { return nil }
        return node
    }

    // MARK: - Carrying out the machine's decisions

    /// `link` is the link the input was about (it may not be in `byID`: a dial that failed).
    private func perform(_ actions: [GatewayLinkAction], link: PeerLink?) {
        func resolve(_ id: UInt64) -> PeerLink? { link?.id == id ? link : byID[id] }
        for action in actions {
            switch action {
            case .deliver(let node, let frame):
                sink.inputDeferred(.gatewayFrame(node, frame))
            case .dial(let address):
                let dialed = links.link(to: address)
                machine.dialed(address, link: dialed.id)
            case .send(let id, let frame):
                resolve(id)?.send(frame)
            case .close(let id, let reason, let goodbye):
                resolve(id)?.close(reason: reason, goodbye: goodbye)
            case .armTimer(let deadline):
                // The machine's own next deadline: an input handled while these actions were
                // carried out (a dial that failed at once) may have made it earlier.
                timer?.cancel()
                timer = eventLoop.scheduleTask(deadline: machine.nextDeadline ?? deadline) { [unowned self] in
                    var actions: [GatewayLinkAction] = []
                    self.machine.timer(now: .now(), actions: &actions)
                    self.perform(actions, link: nil)
                }
            case .linked(let node, let network, let rules):
                if let id = machine.linked[node], let link = resolve(id) { linked[node] = link }
                linksGauge.record(linked.count)
                sink.input(.gatewayLinked(node, network: network, exports: rules))
            case .unlinked(let node):
                linked[node] = nil
                linksGauge.record(linked.count)
                sink.input(.gatewayUnlinked(node))
            case .report(let event):
                log(event, link: link)
            }
        }
    }

    private func log(_ event: GatewayLinkEvent, link: PeerLink?) {
        let peer = "\(link?.peerName ?? "?")"
        switch event {
        case .linkUp(let node):
            logger.info("gateway link up", metadata: ["peer": "\(peer)", "address": "\(link?.advertisedAddress ?? "?")", "node": "\(node)"])
        case .linkDown(_, let graceful, let reason):
            logger.log(level: graceful ? .info : .warning, "gateway link down", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
        case .wrongNetwork(let said):
            logger.warning(
                "gateway link refused: the peer says it is a gateway of another network",
                metadata: ["expected": "\(configuration.spec.network)", "said": "\(said)", "peer": "\(peer)"])
        case .frameBeforeGateway(let kind):
            logger.warning("gateway link broken: a frame before GATEWAY", metadata: ["kind": "\(kind)", "peer": "\(peer)"])
        case .unreachable(let address, let failures, let reason):
            logger.notice("cannot reach a gateway", metadata: ["address": "\(address)", "failures": "\(failures)", "reason": "\(reason)"])
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
            self.machine.stop()
            self.timer?.cancel()
        }.get()
        await links.closeAll(reason: "relay stopped")
    }

    // MARK: - Reporting

    /// This federation for `/status`, with the loop's view of its links (on the event loop).
    func status(core: [(node: NodeID, network: String, designated: Bool, theirInterest: Int, ourInterest: Int)], theirExports: [ExportRule]?) -> RelayStatus.Federation {
        eventLoop.preconditionInEventLoop()
        let spec = configuration.spec
        return RelayStatus.Federation(
            network: spec.network, listen: spec.listen ?? "", gateways: spec.gateways,
            links: linked.map { ($0.key, $0.value.row) }, core: core, weExport: exports, theyExport: theirExports,
            keys: links.keyringIDs)
    }
}

