import Logging
import Metrics
import NIOCore
import NIOPosix
import SkeinCrypto
import SkeinFederation
import SkeinMembership
import SkeinRouting
import SkeinWire

#if canImport(Glibc)
import Glibc
#endif

/// How a relay takes part in the mesh (Docs/relay-settings.md, "Mesh").
public struct MeshConfiguration: Sendable {
    /// This relay's name in the mesh.
    public var name: String
    /// Address for relay-to-relay traffic: TCP peer links and UDP gossip share this host:port.
    public var bindHost: String
    /// 0 picks a free port (the same number for TCP and UDP).
    public var bindPort: Int
    /// What other relays should dial (default: the bind address; required if that is a wildcard).
    public var advertise: String?
    /// Relays to join through, `host:port`. Any one alive is enough; the others may be down.
    public var seeds: [String] = []
    /// A free-form zone tag (e.g. a rack or an availability zone) other relays use to prefer near members.
    public var zone = ""
    public var membership: MembershipSettings = .lan
    public var links = PeerLinkSettings()
    /// A change of this relay's clusters or topics is advertised this long after it, so a burst
    /// of subscriptions makes one metadata update.
    public var metadataDelay: TimeAmount = .milliseconds(50)

    public init(name: String, bindHost: String, bindPort: Int) {
        self.name = name
        self.bindHost = bindHost
        self.bindPort = bindPort
    }
}

/// The relay's part of the mesh as bytes: the sealed UDP gossip socket and the peer links.
/// Everything it hears becomes a `RelayInput` for the relay loop (through `sink`); everything
/// the loop asks of the mesh (`.sendPeer`, `.sendPeerAt`, `.sendDatagram`, `.resetPeerLinks`)
/// arrives through `MeshTransport`. It decides nothing: membership and the rules that join it
/// to routing live in `RelayLoop`. All on the relay's event loop.
public final class MeshNode: MeshTransport, @unchecked Sendable {
    // @unchecked: all mutable state is confined to `eventLoop`.
    public let eventLoop: any EventLoop
    public let configuration: MeshConfiguration
    public let nodeID: NodeID
    public let links: PeerLinks
    /// The address other relays use for this one.
    public let address: MemberAddress
    let logger: Logger
    /// Strong, not `unowned`: an unowned load costs an atomic check per peer frame. The cycle
    /// with the host's transports is broken when the relay stops (`ClientServer.detachTransports`).
    private let sink: any RelayInputSink
    @exclusivity(unchecked) private var sealer: DatagramSealer
    @exclusivity(unchecked) private var opener: DatagramOpener
    @exclusivity(unchecked) private var udp: (any Channel)?
    @exclusivity(unchecked) private var socketAddresses: [MemberAddress: SocketAddress] = [:]
    @exclusivity(unchecked) private var closed = false
    /// Where the gossip socket is bound, and its handler's target, to bind it again.
    @exclusivity(unchecked) private var gossipBinding: (host: String, port: Int)?
    @exclusivity(unchecked) private var gossipTarget: GossipHandler.Target?
    @exclusivity(unchecked) private var gossipReopenAttempts = 0
    private let metrics = MeshMetrics()

    /// Binds TCP and UDP on the configured address (the same port for both; with port 0 the
    /// TCP listener picks it and UDP follows, retried if that UDP port is taken).
    static func start(
        configuration: MeshConfiguration, network: String, keyring: Keyring, sink: any RelayInputSink,
        eventLoop: any EventLoop, logger: Logger
    ) async throws -> MeshNode {
        let idBytes = SecureRandom.bytes(16)
        let host = configuration.bindHost
        let links = PeerLinks(
            identity: PeerIdentity(network: network, nodeID: idBytes, name: configuration.name, address: ""),
            keyring: keyring, settings: configuration.links, eventLoop: eventLoop, logger: logger)
        let gossip = GossipHandler.Target()
        var bound: (port: Int, udp: any Channel)?
        for attempt in 1...5 where bound == nil {
            let port: Int
            do {
                port = try await links.listen(host: host, port: configuration.bindPort)
            } catch {
                throw MeshStartupError.cannotBind("TCP \(host):\(configuration.bindPort): \(error)")
            }
            do {
                let udp = try await bindGossipSocket(host: host, port: port, target: gossip, eventLoop: eventLoop).get()
                bound = (port, udp)
            } catch {
                await links.stopListening()
                if configuration.bindPort != 0 || attempt == 5 {
                    throw MeshStartupError.cannotBind("UDP \(host):\(port): \(error)")
                }
            }
        }
        guard let (port, udp) = bound else { throw MeshStartupError.cannotBind("\(host):\(configuration.bindPort)") }
        let advertise = configuration.advertise ?? "\(host):\(port)"
        guard let (advertisedHost, advertisedPort) = splitHostPort(advertise) else { throw MeshStartupError.badAddress(advertise) }
        return try await eventLoop.submit {
            links.advertise(advertise)
            let node = MeshNode(
                configuration: configuration, nodeID: NodeID(bytes: idBytes), links: links, udp: udp,
                address: MemberAddress(host: advertisedHost, port: UInt16(advertisedPort)),
                network: network, keyring: keyring, sink: sink, eventLoop: eventLoop, logger: logger)
            gossip.node = node
            node.gossipTarget = gossip
            node.gossipBinding = (host, port)
            node.watch(udp)
            logger.info("gossip listening", metadata: ["address": "\(host):\(port)", "node": "\(node.nodeID)", "name": "\(configuration.name)"])
            return node
        }.get()
    }

    private init(
        configuration: MeshConfiguration, nodeID: NodeID, links: PeerLinks, udp: any Channel, address: MemberAddress,
        network: String, keyring: Keyring, sink: any RelayInputSink, eventLoop: any EventLoop, logger: Logger
    ) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.sink = sink
        self.nodeID = nodeID
        self.address = address
        self.links = links
        self.udp = udp
        self.sealer = DatagramSealer(keyring: keyring, network: network)
        self.opener = DatagramOpener(keyring: keyring, network: network)
        links.onFrame = { [unowned self] frame, link in
            if case .membership(let bytes) = frame {
                let from = link.advertisedAddress.flatMap(splitHostPort).map { MemberAddress(host: $0.0, port: UInt16($0.1)) }
                    ?? MemberAddress(host: "?", port: 0)
                self.sink.inputDeferred(.membershipStream(Array(bytes.readableBytesView), from: from))
            } else if let node = link.peerNode {
                self.sink.peerFrameDeferred(frame, from: node)
            }
        }
        links.onReadComplete = { [unowned self] _ in self.sink.inputsComplete() }
        links.onWritable = { [unowned self] link in
            if let node = link.peerNode { self.sink.input(.peerWritability(node, writable: true)) }
        }
        links.onUnwritable = { [unowned self] link in
            if let node = link.peerNode { self.sink.input(.peerWritability(node, writable: false)) }
        }
        links.onLinkDown = { [unowned self] link in
            guard !self.closed, let end = link.end else { return }
            self.sink.input(.peerLinkDown(end))
        }
        links.onLinkUp = { [unowned self] link in
            guard !self.closed, let node = link.peerNode else { return }
            self.sink.input(.peerLinkUp(node))
        }
    }

    /// What the relay loop needs to know to take part in the mesh.
    public var loopMesh: RelayLoopMesh {
        var mesh = RelayLoopMesh(id: nodeID, name: configuration.name, address: address, zone: configuration.zone, membership: configuration.membership)
        mesh.metadataDelay = configuration.metadataDelay
        return mesh
    }

    // MARK: - Running

    /// Joins through the seeds (resolved here; unresolvable ones are logged and skipped, as
    /// seeds may be wrong). At start, and while running (`skein join`); returns the seeds that
    /// resolved.
    @discardableResult
    public func join(seeds: [String]) async -> [MemberAddress] {
        let resolved = resolve(seeds)
        try? await eventLoop.submit {
            guard !self.closed else { return }
            if !seeds.isEmpty { self.logger.info("joining", metadata: ["seeds": "\(resolved)"]) }
            self.sink.input(.join(resolved))
        }.get()
        return resolved
    }

    private func resolve(_ addresses: [String]) -> [MemberAddress] {
        var seeds: [MemberAddress] = []
        for seed in addresses {
            guard let (host, port) = splitHostPort(seed) else {
                logger.warning("ignoring seed: not host:port", metadata: ["seed": "\(seed)"])
                continue
            }
            do {
                let resolved = try SocketAddress.makeAddressResolvingHost(host, port: port)
                seeds.append(MemberAddress(host: resolved.ipAddress ?? host, port: UInt16(port)))
            } catch {
                logger.warning("ignoring seed: cannot resolve", metadata: ["seed": "\(seed)", "error": "\(error)"])
            }
        }
        return seeds
    }

    /// Leaves gracefully: tells the mesh (so others see "left", never "dead", and send no new
    /// work), and waits `within` for the word to spread. Peer links stay open: in-flight requests
    /// from other relays can still be answered; `close()` ends them.
    public func leave(within: TimeAmount = .milliseconds(300)) async {
        try? await eventLoop.submit { self.sink.input(.leave) }.get()
        try? await Task.sleep(nanoseconds: UInt64(within.nanoseconds))
    }

    /// Closes every peer link with a goodbye, and the gossip socket: the last step of a stop,
    /// after `leave` and after in-flight work has drained (replies to other relays still
    /// travel on the links until now).
    public func close() async {
        try? await eventLoop.submit { self.closed = true }.get()
        await links.closeAll(reason: "relay stopped")
        let udp = try? await eventLoop.submit { () -> (any Channel)? in
            defer { self.udp = nil }
            return self.udp
        }.get()
        if let udp = udp ?? nil { try? await udp.close() }
    }

    // MARK: - The gossip socket

    /// SwiftNIO closes a datagram channel on any send error but EMSGSIZE and EHOSTUNREACH:
    /// EPERM from a host firewall that drops our own output (nftables, iptables), ENETUNREACH
    /// while a route is gone, ENOBUFS. Left closed, the relay would go on with its links but no
    /// gossip: unable to refute, held dead by everyone while it is up (issue 17). So an
    /// unexpected close binds the same address again at once, then with backoff.
    private func watch(_ channel: any Channel) {
        channel.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            self.eventLoop.execute { self.gossipSocketClosed(channel) }
        }
    }

    private func gossipSocketClosed(_ channel: any Channel) {
        guard !closed, let current = udp, current === channel else { return }
        udp = nil
        metrics.gossipSocketReopened.increment()
        logger.warning(
            "gossip socket closed by an error; binding it again",
            metadata: ["error": "\(gossipTarget?.lastError.map { "\($0)" } ?? "unknown")"])
        reopenGossipSocket()
    }

    private func reopenGossipSocket() {
        guard !closed, udp == nil, let (host, port) = gossipBinding, let target = gossipTarget else { return }
        bindGossipSocket(host: host, port: port, target: target, eventLoop: eventLoop).hop(to: eventLoop).whenComplete { [weak self] result in
            guard let self else { return }
            switch result {
            case .success(let channel):
                guard !self.closed else {
                    channel.close(promise: nil)
                    return
                }
                self.udp = channel
                self.gossipReopenAttempts = 0
                self.watch(channel)
                self.logger.info("gossip listening again", metadata: ["address": "\(host):\(port)"])
            case .failure(let error):
                // The port may be held a moment longer; retry with backoff (10 ms doubling to 2 s).
                self.gossipReopenAttempts += 1
                let delay = TimeAmount.milliseconds(min(2_000, 10 << min(self.gossipReopenAttempts, 8)))
                self.logger.error("cannot bind the gossip socket again; retrying", metadata: [
                    "address": "\(host):\(port)", "error": "\(error)", "retry-ms": "\(delay.nanoseconds / 1_000_000)"])
                self.eventLoop.scheduleTask(in: delay) { self.reopenGossipSocket() }
            }
        }
    }

    /// Takes a new keyring (SIGHUP): datagrams and links use it at once.
    public func update(keyring: Keyring) async {
        try? await eventLoop.submit {
            self.sealer = DatagramSealer(keyring: keyring, network: self.links.identity.network)
            self.opener.update(keyring: keyring)
            self.links.update(keyring: keyring)
        }.get()
    }

    // MARK: - Inputs (on the event loop)

    func receivedDatagram(_ buffer: ByteBuffer, from remote: SocketAddress) {
        guard !closed, let host = remote.ipAddress, let port = remote.port else { return }
        let payload: [UInt8]
        do {
            payload = try opener.open(Array(buffer.readableBytesView), nowMillis: wallClockMillis())
        } catch {
            metrics.datagramsRejected(error).increment()
            logger.debug("dropped a datagram", metadata: ["from": "\(host):\(port)", "reason": "\(error)"])
            return
        }
        sink.input(.datagram(payload, from: MemberAddress(host: host, port: UInt16(port))))
    }

    // MARK: - Outputs (MeshTransport, on the event loop)

    func send(_ frame: PeerFrame, toNode node: NodeID) -> Bool {
        guard let link = links.link(toNode: node) else { return false }
        link.send(frame)
        return true
    }

    func send(_ frame: PeerFrame, toAddress address: MemberAddress) {
        links.link(to: "\(address.host):\(address.port)").send(frame)
    }

    func sendDatagram(_ payload: [UInt8], to: MemberAddress) {
        guard let udp else { return }
        let address: SocketAddress
        if let cached = socketAddresses[to] {
            address = cached
        } else {
            guard let made = try? SocketAddress(ipAddress: to.host, port: Int(to.port)) else {
                logger.debug("cannot send to a non-IP address", metadata: ["to": "\(to)"])
                return
            }
            if socketAddresses.count > 65_536 { socketAddresses.removeAll() }
            socketAddresses[to] = made
            address = made
        }
        let sealed = sealer.seal(payload, nowMillis: wallClockMillis(), nonce: SecureRandom.bytes(24))
        udp.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: udp.allocator.buffer(bytes: sealed)), promise: nil)
    }

    func resetLinks(to node: NodeID, reason: String) {
        let reset = links.reset(node: node, reason: reason)
        if reset > 0 { metrics.staleLinksReset.increment(by: Int64(reset)) }
    }

    // MARK: - Reporting

    /// The established peer links, for `/status` (on the event loop).
    var linkRows: [LinkRow] { links.rows }
}

extension PeerLink {
    /// How the link ended, for the relay loop (`PeerLinkEnd.init(closure:said:dialed:)`).
    var end: PeerLinkEnd? {
        guard let closure else { return nil }
        let dialed = dialedAddress.flatMap(splitHostPort).map { MemberAddress(host: $0.0, port: UInt16($0.1)) }
        return PeerLinkEnd(closure: closure, saidHello: advertisedAddress != nil, dialed: dialed)
    }
}

/// The UDP socket of the gossip protocol, bound to `host:port`. No SO_REUSEADDR: a closed UDP
/// socket frees its port at once (no TIME_WAIT), and without it a port another process holds
/// still fails the bind, as at startup.
private func bindGossipSocket(host: String, port: Int, target: GossipHandler.Target, eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
    DatagramBootstrap(group: eventLoop)
        .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(GossipHandler(target: target))
            }
        }
        .bind(host: host, port: port)
}

private final class GossipHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    /// The node, set (on the event loop) once it exists; datagrams before that are dropped.
    final class Target: @unchecked Sendable {
        weak var node: MeshNode?
        /// The last error the socket reported (a send error closes it: see `MeshNode.watch`).
        var lastError: (any Error)?
    }

    let target: Target

    init(target: Target) { self.target = target }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        target.node?.receivedDatagram(envelope.data, from: envelope.remoteAddress)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP refusals surfacing as ECONNREFUSED leave the socket open; other errors close it,
        // and the node binds it again.
        target.lastError = error
        target.node?.logger.debug("gossip socket error", metadata: ["error": "\(error)"])
    }
}

/// Logs and counts a membership event (the relay loop reports it as `.membership`).
func logMembershipEvent(_ event: MembershipEvent, logger: Logger) {
    switch event {
    case .joined(let member):
        logger.info("relay joined", metadata: member.logMetadata)
    case .statusChanged(let member, let from):
        let level: Logger.Level = member.status == .dead || member.status == .suspect ? .warning : .info
        logger.log(level: level, "relay is \(member.status.rawValue)", metadata: member.logMetadata.merging(["was": "\(from.rawValue)"]) { $1 })
        MeshMetrics().statusChanges(member.status).increment()
    case .metadataChanged(let member):
        logger.info("relay metadata changed", metadata: member.logMetadata.merging(["version": "\(member.metadataVersion)"]) { $1 })
    case .removed(let id):
        logger.info("relay forgotten", metadata: ["node": "\(id)"])
    case .nameConflict(let existing, let new):
        logger.warning(
            "two relays use the same name",
            metadata: ["name": "\(new.name)", "existing": "\(existing.address)", "new": "\(new.address)"])
    }
}

struct MeshMetrics {
    let gossipSocketReopened = Counter(label: "skein_gossip_socket_reopened_total")
    let staleLinksReset = Counter(label: "skein_peer_links_reset_total")

    func datagramsRejected(_ error: DatagramError) -> Counter {
        Counter(label: "skein_gossip_datagrams_rejected_total", dimensions: [("reason", "\(error.metricReason)")])
    }

    func statusChanges(_ status: MemberStatus) -> Counter {
        Counter(label: "skein_membership_status_changes_total", dimensions: [("status", status.rawValue)])
    }
}

extension DatagramError {
    var metricReason: String {
        switch self {
        case .tooShort: "too_short"
        case .wrongVersion: "wrong_version"
        case .unknownKey: "unknown_key"
        case .authenticationFailed: "authentication_failed"
        case .stale: "stale"
        case .replayed: "replayed"
        }
    }
}

extension Member {
    var logMetadata: Logger.Metadata {
        ["name": "\(name)", "node": "\(id)", "address": "\(address)", "incarnation": "\(incarnation)"]
    }
}

func wallClockMillis() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
}
