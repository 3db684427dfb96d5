import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkeinCrypto
import SkeinFederation
import SkeinWire
import UnixSignals

/// Everything `skein relay` can be told. Docs/relay-settings.md documents each field and flag.
public struct RelayConfiguration: Sendable {
    /// Protocol limits enforced per connection.
    public var settings = RelaySettings()
    /// Loopback addresses to listen on for clients.
    public var clientHosts = ["127.0.0.1", "::1"]
    /// TCP port for clients (0 picks a free one).
    public var clientPort = 55555
    /// Optional Unix domain socket path for clients.
    public var clientSocket: String?
    /// High-water mark of a connection's unsent output, in bytes. Above it the connection
    /// counts as blocked: publishers and broadcasters sending to it are paused (backpressure),
    /// and if it stays blocked for `settings.slowConsumerTimeout` it is closed.
    public var sendBufferHighWater = 8 << 20
    /// On shutdown, how long in-flight requests may take to finish before connections close.
    public var drainTimeout: TimeAmount = .seconds(5)
    /// The operators' HTTP endpoint (`/status`, `/members`, `/metrics`) as (host, port), or nil
    /// for none. Port 0 picks one. `skein relay` serves it on 127.0.0.1:55557 by default.
    public var admin: (host: String, port: Int)?
    /// The network's name and keyring.
    public var network = "dev"
    public var keyring: Keyring?
    /// Relay-to-relay membership and links, or nil for a relay on its own.
    public var mesh: MeshConfiguration?
    /// The networks this relay is a gateway to (Docs/federation.md); empty for most relays.
    /// `settings.federation` holds the network name and the exports they enforce.
    public var federations: [GatewayConfiguration] = []
    /// SIGHUP reloads the key files (`keyFiles`, and each federation's): `skein relay` sets it.
    public var reloadsOnSIGHUP = false
    /// The files `keyring` was read from, for SIGHUP.
    public var keyFiles: [String] = []

    public init() {}
}

/// The relay as a swift-service-lifecycle `Service`: listens until graceful shutdown
/// (SIGTERM/SIGINT), then stops accepting, lets in-flight requests finish up to the drain
/// timeout, and closes every connection with a reason.
public final class RelayService: Service, Sendable {
    public let server: ClientServer
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    private let ready: AsyncStream<Int>.Continuation
    /// Yields the bound client TCP port once the relay listens, then finishes.
    public let listening: AsyncStream<Int>
    private let metricsText: (@Sendable () -> [UInt8])?
    private let adminServer = NIOLockedValueBox<AdminServer?>(nil)
    private let meshNode = NIOLockedValueBox<MeshNode?>(nil)
    private let gatewayNodes = NIOLockedValueBox<[GatewayNode]>([])
    private let keyringBox: NIOLockedValueBox<Keyring?>

    /// The relay's part of the mesh, once it runs (nil without `configuration.mesh`).
    public var mesh: MeshNode? { meshNode.withLockedValue { $0 } }

    /// `metricsText`, if given, renders every metric in the Prometheus text format for `/metrics`.
    public init(configuration: RelayConfiguration, logger: Logger, metricsText: (@Sendable () -> [UInt8])? = nil) {
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.logger = logger
        self.metricsText = metricsText
        self.keyringBox = NIOLockedValueBox(configuration.keyring)
        self.server = ClientServer(configuration: configuration, eventLoop: group.next(), logger: logger)
        (self.listening, self.ready) = AsyncStream.makeStream(of: Int.self)
    }

    /// The admin endpoint's bound port, once the relay listens.
    public var adminPort: Int? { adminServer.withLockedValue { $0?.port } }

    /// A link's field limits, raised to carry every field the relay's clients may send.
    static func linkLimits(_ limits: WireLimits, carrying clients: WireLimits) -> WireLimits {
        var limits = limits
        limits.maxMessageSize = max(limits.maxMessageSize, clients.maxMessageSize)
        limits.maxStringSize = max(limits.maxStringSize, clients.maxStringSize)
        limits.maxHeaders = max(limits.maxHeaders, clients.maxHeaders)
        limits.maxHeaderBytes = max(limits.maxHeaderBytes, clients.maxHeaderBytes)
        return limits
    }

    /// Starts every part (clients, mesh, gateways, admin endpoint), joins the mesh, and then runs
    /// the parts as services of one `ServiceGroup` until graceful shutdown, which stops them in
    /// reverse order (`services`).
    public func run() async throws {
        // SIGHUP is trapped before anything starts, and until everything stopped (the reloader
        // is the first service, so the last to stop): its default action would end the process.
        let sighup = server.configuration.reloadsOnSIGHUP ? await UnixSignalsSequence(trapping: .sighup) : nil
        var services: [any Service] = []
        if let sighup { services.append(KeyReloader(relay: self, signals: sighup, logger: logger)) }
        do {
            services += try await start()
        } catch {
            ready.finish()
            for gateway in gateways { await gateway.close() }
            await mesh?.leave(within: .zero)
            await mesh?.close()
            await server.stopListening()
            await server.detachTransports()
            try? await group.shutdownGracefully()
            throw error
        }
        if let mesh { await mesh.join(seeds: mesh.configuration.seeds) }
        ready.yield(await server.boundPort ?? -1)
        ready.finish()
        logger.info("relay ready", metadata: ["protocol": "v1.0-draft2", "extensions": "skein/1"])

        let parts = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) }, logger: logger))
        do {
            try await parts.run()
        } catch {
            logger.error("a part of the relay failed while it ran", metadata: ["error": "\(error)"])
        }
        await server.detachTransports()
        try await group.shutdownGracefully()
        logger.info("relay stopped")
    }

    /// Binds and starts every part; returns them as services in the order they must outlive
    /// each other. A graceful shutdown stops them from the last to the first:
    ///
    /// 1. membership: the relay leaves the mesh, so others see "left" (not "dead") and stop
    ///    sending it new work;
    /// 2. the admin endpoint;
    /// 3. clients: no new connections; requests in flight finish (the loop says when, or
    ///    `drainTimeout`); every connection is closed with a reason;
    /// 4. the gateway links (what the drain needed of them is done);
    /// 5. the peer links and the gossip socket;
    /// 6. the SIGHUP reloader (`run` puts it first in the list, so it stops last).
    private func start() async throws -> [any Service] {
        try await server.start()
        var services: [any Service] = []
        var meshNode: MeshNode?
        if var mesh = server.configuration.mesh {
            // Whatever a client may send must cross a link too.
            mesh.links.limits = Self.linkLimits(mesh.links.limits, carrying: server.configuration.settings.wire)
            guard let keyring = server.configuration.keyring else { throw MeshStartupError.noKeyring }
            let node = try await MeshNode.start(
                configuration: mesh, network: server.configuration.network, keyring: keyring,
                sink: server, eventLoop: server.eventLoop, logger: logger)
            self.meshNode.withLockedValue { $0 = node }
            try await server.eventLoop.submit { try self.server.attachMesh(node.loopMesh, transport: node) }.get()
            services.append(MeshLinksService(mesh: node))
            meshNode = node
        }
        for gateway in try await startGateways() { services.append(GatewayService(gateway: gateway)) }
        services.append(ClientsService(server: server, drainTimeout: server.configuration.drainTimeout, logger: logger))
        if let admin = server.configuration.admin {
            let endpoint = try await startAdmin(host: admin.host, port: admin.port)
            adminServer.withLockedValue { $0 = endpoint }
            services.append(AdminService(endpoint: endpoint))
        }
        if let meshNode { services.append(MembershipService(mesh: meshNode, logger: logger)) }
        return services
    }
}

extension RelayService {
    /// The relay's federations, once they run.
    public var gateways: [GatewayNode] { gatewayNodes.withLockedValue { $0 } }

    private func startGateways() async throws -> [GatewayNode] {
        let configuration = server.configuration
        guard !configuration.federations.isEmpty else { return [] }
        let nodeID = mesh?.nodeID.bytes ?? SecureRandom.bytes(16)
        let name = configuration.mesh?.name ?? "relay"
        var started: [GatewayNode] = []
        for var federation in configuration.federations {
            federation.links.limits = Self.linkLimits(federation.links.limits, carrying: configuration.settings.wire)
            let exports = configuration.settings.federation.exports[federation.spec.network] ?? ExportTable()
            let gateway = try await GatewayNode.start(
                federation, localNetwork: configuration.network, exports: exports, nodeID: nodeID, name: name,
                sink: server, eventLoop: server.eventLoop, logger: logger)
            started.append(gateway)
            gatewayNodes.withLockedValue { $0 = started }
            try await server.eventLoop.submit { self.server.attachGateway(gateway) }.get()
        }
        return started
    }

    private func startAdmin(host: String, port: Int) async throws -> AdminServer {
        do {
            return try await AdminServer.start(host: host, port: port, group: group, logger: logger) { [self] request in
                await self.adminRoute(request)
            }
        } catch {
            throw RelayStartupError.cannotListenAdmin("\(host):\(port): \(error)")
        }
    }

    func adminRoute(_ request: AdminServer.Request) async -> AdminResponse? {
        if request.method == .POST {
            guard request.path == "/join" else { return nil }
            guard let mesh else {
                return .text("this relay is not part of a mesh (it was started without --bind)\n", status: .conflict)
            }
            let seeds = String(decoding: request.body, as: UTF8.self).split(whereSeparator: \.isWhitespace).map(String.init)
            guard !seeds.isEmpty else { return .text("POST /join needs host:port seeds in the body\n", status: .badRequest) }
            let accepted = await mesh.join(seeds: seeds)
            return .json(.object([("joining", .array(accepted.map { .string($0.description) }))]))
        }
        switch request.path {
        case "/status", "/":
            return .json(await status())
        case "/members":
            guard let members = await server.membersJSON else {
                return .text("this relay is not part of a mesh (it was started without --bind)\n", status: .notFound)
            }
            return .json(members)
        case "/metrics":
            guard let metricsText else { return .text("no metrics exporter is configured in this process\n", status: .notFound) }
            return AdminResponse(contentType: "text/plain; version=0.0.4; charset=utf-8", body: metricsText())
        default:
            return nil
        }
    }

    /// The relay's state as `/status` reports it (`RelayStatus`; the shape is in
    /// Docs/operations.md): one snapshot of the loop and every link, taken on the event loop.
    public func status() async -> JSON {
        let configuration = server.configuration
        let keys = currentKeyIDs
        let gateways = self.gateways
        let mesh = self.mesh
        return (try? await server.eventLoop.submit { () -> JSON in
            let rows = self.server.federationRows
            let status = RelayStatus(
                network: configuration.network, keys: keys, clients: self.server.clientStatus,
                federations: gateways.map { $0.status(core: rows.links, theirExports: rows.exports[$0.network]) },
                mesh: mesh.map {
                    RelayStatus.Mesh(
                        name: $0.configuration.name, node: $0.nodeID, address: $0.address.description, zone: $0.configuration.zone,
                        links: $0.linkRows)
                })
            return status.json
        }.get()) ?? .null
    }

    private var currentKeyIDs: [String] {
        keyringBox.withLockedValue { $0 }?.keyIDs.map(\.description) ?? []
    }

    /// Replaces the keyring (SIGHUP): new handshakes and datagrams use it at once, and links
    /// made with a key no longer in it close and reconnect.
    public func reload(keyring: Keyring) async {
        keyringBox.withLockedValue { $0 = keyring }
        await mesh?.update(keyring: keyring)
        logger.info("keyring reloaded", metadata: ["keys": "\(keyring.keyIDs.map(\.description))"])
    }

    /// Replaces the federation keyring of the federation with `network` (SIGHUP).
    public func reload(federation network: String, keyring: Keyring) async {
        guard let gateway = gateways.first(where: { $0.network == network }) else { return }
        try? await server.eventLoop.submit { gateway.update(keyring: keyring) }.get()
        logger.info("federation keyring reloaded", metadata: ["federation": "\(network)", "keys": "\(keyring.keyIDs.map(\.description))"])
    }
}