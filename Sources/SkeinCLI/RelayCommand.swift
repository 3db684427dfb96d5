import ArgumentParser
import Logging
import Metrics
import NIOCore
import Prometheus
#if canImport(Glibc)
import Glibc
#endif
import ServiceLifecycle
import SkeinCrypto
import SkeinFederation
import SkeinRelay

struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Run the relay daemon (one per host).",
        discussion: """
            Serves the Iris relay protocol v1.0-draft2 to local applications on 127.0.0.1 and ::1. SIGTERM or SIGINT drain in-flight requests (up to --drain-timeout), close every connection with a reason, and exit 0. Every flag is described in Docs/relay-settings.md.

            Without --bind the relay is a network of its own. With --bind HOST:PORT it joins the mesh: relays reach each other on that address (TCP peer links and UDP gossip share it), find each other through --seed, and trust each other only if they hold the same network key (--key-file, repeatable: the first key is primary, the others accepted). SIGHUP reloads the key files.

            A relay can also be a gateway to other networks (Docs/federation.md): give each federation in a file (--federation-config) or one with flags (--federation, --federation-listen, --federation-gateway, --federation-key-file, --export). Clients then address the other network's clusters and topics as name@network, and get only what it exports.
            """)

    @Flag(name: .long, help: "Development mode: a single-relay network with a throwaway random key.")
    var dev = false

    @Option(name: .long, help: ArgumentHelp("Network name.", valueName: "name"))
    var network: String?

    @Option(name: .long, help: ArgumentHelp("A key file or keyring (see `skein keygen`); repeatable, the first key is the primary. SIGHUP reloads.", valueName: "path"))
    var keyFile: [String] = []

    @Option(name: .long, help: ArgumentHelp("TCP port for local clients (0 picks one).", valueName: "port"))
    var clientPort = 55555

    @Option(name: .long, help: ArgumentHelp("Also listen on this Unix socket.", valueName: "path"))
    var clientSocket: String?

    @Option(name: .long, help: ArgumentHelp("Loopback address to listen on; repeatable.", valueName: "address"))
    var clientHost: [String] = []

    @Option(name: .long, help: ArgumentHelp("Largest request, reply, broadcast or event, in bytes (tunnel messages may be of any size).", valueName: "bytes"))
    var maxMessageSize = RelaySettings().wire.maxMessageSize

    @Option(name: .long, help: ArgumentHelp("Largest string field (cluster, topic, fault, reason), in bytes.", valueName: "bytes"))
    var maxStringSize = RelaySettings().wire.maxStringSize

    @Option(name: .long, help: ArgumentHelp("Most headers one skein/2 message may carry.", valueName: "count"))
    var maxHeaders = RelaySettings().wire.maxHeaders

    @Option(name: .long, help: ArgumentHelp("Largest encoded headers block of one skein/2 message, in bytes.", valueName: "bytes"))
    var maxHeaderBytes = RelaySettings().wire.maxHeaderBytes

    @Option(name: .long, help: ArgumentHelp("Close connections that send no INIT within this time.", valueName: "ms"))
    var handshakeTimeout = 5000

    @Option(name: .long, help: ArgumentHelp("Longest request or tunnel-build timeout honoured; longer ones are clamped to it.", valueName: "ms"))
    var maxTimeout = 86_400_000

    @Option(name: .long, help: ArgumentHelp("Largest tunnel chunk, in bytes.", valueName: "bytes"))
    var tunnelChunkLimit = Int(RelaySettings().tunnelChunkLimit)

    @Option(name: .long, help: ArgumentHelp("Bytes the relay buffers per tunnel direction.", valueName: "bytes"))
    var tunnelBuffer = Int(RelaySettings().tunnelBuffer)

    @Option(name: .long, help: ArgumentHelp("Unanswered requests per connection before the relay stops reading it.", valueName: "count"))
    var maxPendingRequests = RelaySettings().maxPendingRequests

    @Option(name: .long, help: ArgumentHelp("Tunnels per connection.", valueName: "count"))
    var maxTunnels = RelaySettings().maxTunnelsPerConnection

    @Option(name: .long, help: ArgumentHelp("Unsent output per connection above which senders to it are paused.", valueName: "bytes"))
    var sendBuffer = RelayConfiguration().sendBufferHighWater

    @Option(name: .long, help: ArgumentHelp("Close a connection whose output stays blocked this long.", valueName: "ms"))
    var slowConsumerTimeout = 10_000

    @Option(name: .long, help: ArgumentHelp("Close a blocked connection once this many bytes from other relays wait for it.", valueName: "bytes"))
    var slowConsumerBytes = Int(RelaySettings().slowConsumerBytes)

    @Option(name: .long, help: ArgumentHelp("How long another relay holds a stream for a blocked receiver here unless refreshed (refreshed every half).", valueName: "ms"))
    var holdLease = Int(RelaySettings().holdLease.nanoseconds / 1_000_000)

    @Option(name: .long, help: ArgumentHelp("On shutdown, time allowed for in-flight requests.", valueName: "ms"))
    var drainTimeout = 5000

    @Option(name: .long, help: ArgumentHelp("Port of the operators' HTTP endpoint (/status, /members, /metrics) on --admin-host; 0 picks one.", valueName: "port"))
    var adminPort = 55557

    @Option(name: .long, help: ArgumentHelp("Loopback address of the admin endpoint.", valueName: "address"))
    var adminHost = "127.0.0.1"

    @Flag(name: .long, help: "Serve no admin endpoint.")
    var noAdmin = false

    @Option(name: .long, help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
    var logLevel = "info"

    @Option(name: .long, help: ArgumentHelp("Join the mesh: address for relay-to-relay traffic (TCP links and UDP gossip); port 0 picks one.", valueName: "host:port"))
    var bind: String?
    @Option(name: .long, help: ArgumentHelp("Address other relays should use, if not --bind (required when binding a wildcard address).", valueName: "host:port"))
    var advertise: String?
    @Option(name: .long, help: ArgumentHelp("A relay to join through; repeatable. Any one alive is enough.", valueName: "host:port"))
    var seed: [String] = []
    @Option(name: .long, help: ArgumentHelp("This relay's name in the mesh (default: the host name).", valueName: "name"))
    var name: String?
    @Option(name: .long, help: ArgumentHelp("This relay's zone tag.", valueName: "zone"))
    var zone = ""
    @Option(name: .long, help: ArgumentHelp("Membership timings: lan (default) or fast (loopback and fast local networks).", valueName: "profile"))
    var gossipProfile = "lan"

    @Option(name: .long, help: ArgumentHelp("This gateway's federations, in a file (format: Docs/federation.md). SIGHUP reloads their key files.", valueName: "path"))
    var federationConfig: String?
    @Option(name: .long, help: ArgumentHelp("Federate with this network (one federation by flags; more in --federation-config).", valueName: "network"))
    var federation: String?
    @Option(name: .long, help: ArgumentHelp("Where this gateway listens for --federation's gateways.", valueName: "host:port"))
    var federationListen: String?
    @Option(name: .long, help: ArgumentHelp("A gateway of --federation's network; repeatable. Any one up is enough.", valueName: "host:port"))
    var federationGateway: [String] = []
    @Option(name: .long, help: ArgumentHelp("The federation key shared by both networks' gateways (see `skein keygen`); repeatable: the first is primary.", valueName: "path"))
    var federationKeyFile: [String] = []
    @Option(name: .long, help: ArgumentHelp("Export to --federation's network: KINDS:PATTERN, kinds request, broadcast, tunnel, subscribe, publish (comma-separated), pattern a name or a * glob; repeatable. Nothing is exported by default.", valueName: "kinds:pattern"))
    var export: [String] = []

    func validate() throws {
        if bind == nil && (!seed.isEmpty || advertise != nil) {
            throw ValidationError("--seed and --advertise need --bind HOST:PORT (the address for relay-to-relay traffic)")
        }
        if let bind {
            guard let (host, _) = splitHostPort(bind) else { throw ValidationError("--bind must be host:port, not \(bind)") }
            if advertise == nil && (host == "0.0.0.0" || host == "::") {
                throw ValidationError("--bind \(bind) is a wildcard address: give --advertise HOST:PORT, the address other relays should dial")
            }
        }
        if let advertise, splitHostPort(advertise) == nil { throw ValidationError("--advertise must be host:port, not \(advertise)") }
        for s in seed where splitHostPort(s) == nil { throw ValidationError("--seed must be host:port, not \(s)") }
        guard ["lan", "fast"].contains(gossipProfile) else { throw ValidationError("--gossip-profile must be lan or fast") }
        if let network, !NetworkName.isValid(network) {
            throw ValidationError("--network must be 1–\(NetworkName.maxLength) bytes of A–Z a–z 0–9 . _ - (it ends name@network addresses)")
        }
        if federation == nil && (federationListen != nil || !federationGateway.isEmpty || !federationKeyFile.isEmpty || !export.isEmpty) {
            throw ValidationError("--federation-listen, --federation-gateway, --federation-key-file and --export describe --federation NETWORK: give it")
        }
        do {
            for rule in export { _ = try FederationConfig.exportFlag(rule) }
            if let flagged = try flagFederation() {
                try FederationConfig.validate([flagged], localNetwork: network ?? (dev ? "dev" : "default"))
            }
        } catch {
            throw ValidationError("\(error)")
        }
        if let name, name.isEmpty || name.utf8.count > 255 { throw ValidationError("--name must be 1…255 bytes") }
        if dev && !keyFile.isEmpty {
            throw ValidationError("--dev generates its own key; do not combine it with --key-file")
        }
        if !dev && keyFile.isEmpty {
            throw ValidationError("give --key-file PATH (create one with `skein keygen`) or --dev")
        }
        if dev && !seed.isEmpty {
            throw ValidationError("--dev uses a throwaway key no other relay holds, so it cannot join through --seed; use --key-file")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        guard (0...65535).contains(clientPort) else { throw ValidationError("--client-port must be 0…65535") }
        for (value, flag) in [
            (maxMessageSize, "--max-message-size"), (maxStringSize, "--max-string-size"), (maxHeaders, "--max-headers"), (maxHeaderBytes, "--max-header-bytes"), (tunnelChunkLimit, "--tunnel-chunk-limit"), (tunnelBuffer, "--tunnel-buffer"),
            (maxPendingRequests, "--max-pending-requests"), (maxTunnels, "--max-tunnels"), (sendBuffer, "--send-buffer"),
            (handshakeTimeout, "--handshake-timeout"), (maxTimeout, "--max-timeout"), (slowConsumerTimeout, "--slow-consumer-timeout"),
            (slowConsumerBytes, "--slow-consumer-bytes"), (holdLease, "--hold-lease"),
        ] where value <= 0 {
            throw ValidationError("\(flag) must be positive")
        }
        guard drainTimeout >= 0 else { throw ValidationError("--drain-timeout must not be negative") }
        guard tunnelBuffer >= tunnelChunkLimit else {
            throw ValidationError("--tunnel-buffer must be at least --tunnel-chunk-limit, or no chunk could ever be sent")
        }
        guard (0...65535).contains(adminPort) else { throw ValidationError("--admin-port must be 0…65535") }
        guard isLoopback(adminHost) else {
            throw ValidationError("--admin-host \(adminHost) is not a loopback address; the admin endpoint has no authentication")
        }
        for host in clientHost where !isLoopback(host) {
            throw ValidationError("--client-host \(host) is not a loopback address; clients connect to their local relay only")
        }
    }

    func run() async throws {
        tuneAllocator()
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "skein.relay")

        let keyring: Keyring
        if !keyFile.isEmpty {
            do {
                keyring = try Keyring.load(fromFiles: keyFile)
            } catch {
                printError("cannot use the key file: \(error)")
                throw ExitCode(78)  // EX_CONFIG
            }
        } else {
            keyring = Keyring(primary: NetworkKey.generate())
        }
        let networkName = network ?? (dev ? "dev" : "default")
        logger.info("network", metadata: [
            "network": "\(networkName)", "key-id": "\(keyring.primaryID)",
            "accepted-keys": "\(keyring.keyIDs.dropFirst().map(\.description))", "dev": "\(dev)",
        ])

        var configuration = RelayConfiguration()
        configuration.clientPort = clientPort
        configuration.clientSocket = clientSocket
        if !clientHost.isEmpty { configuration.clientHosts = clientHost }
        configuration.sendBufferHighWater = sendBuffer
        configuration.drainTimeout = .milliseconds(Int64(drainTimeout))
        configuration.settings.wire.maxMessageSize = maxMessageSize
        configuration.settings.wire.maxStringSize = maxStringSize
        configuration.settings.wire.maxHeaders = maxHeaders
        configuration.settings.wire.maxHeaderBytes = maxHeaderBytes
        configuration.settings.handshakeTimeout = .milliseconds(Int64(handshakeTimeout))
        configuration.settings.maxTimeout = .milliseconds(Int64(maxTimeout))
        configuration.settings.tunnelChunkLimit = UInt64(tunnelChunkLimit)
        configuration.settings.tunnelBuffer = UInt64(tunnelBuffer)
        configuration.settings.maxPendingRequests = maxPendingRequests
        configuration.settings.maxTunnelsPerConnection = maxTunnels
        configuration.settings.slowConsumerTimeout = .milliseconds(Int64(slowConsumerTimeout))
        configuration.settings.slowConsumerBytes = UInt64(slowConsumerBytes)
        configuration.settings.holdLease = .milliseconds(Int64(holdLease))

        configuration.network = networkName
        configuration.keyring = keyring
        if let bind, let (host, port) = splitHostPort(bind) {
            var mesh = MeshConfiguration(name: name ?? hostName(), bindHost: host, bindPort: port)
            mesh.advertise = advertise
            mesh.seeds = seed
            mesh.zone = zone
            mesh.membership = gossipProfile == "fast" ? .fastLocal : .lan
            configuration.mesh = mesh
        }
        if !noAdmin { configuration.admin = (adminHost, adminPort) }
        configuration.settings.federation.network = networkName
        let federations: [GatewayConfiguration]
        do {
            federations = try loadFederations(localNetwork: networkName)
        } catch {
            printError("cannot use the federation configuration: \(error)")
            throw ExitCode(78)  // EX_CONFIG
        }
        configuration.federations = federations
        for federation in federations {
            configuration.settings.federation.exports[federation.spec.network] = federation.spec.exports
            logger.info("federation", metadata: [
                "network": "\(federation.spec.network)", "listen": "\(federation.spec.listen ?? "")",
                "gateways": "\(federation.spec.gateways)", "key-id": "\(federation.keyring.primaryID)",
                "exports": "\(federation.spec.exports.rules.map(\.description))",
            ])
        }

        configuration.reloadsOnSIGHUP = true
        configuration.keyFiles = keyFile
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let relay = RelayService(configuration: configuration, logger: logger, metricsText: { registry.emitToBuffer() })
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: relay)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        do {
            try await group.run()
        } catch {
            printError("\(error)")
            throw ExitCode(ExitStatus.unavailable)
        }
    }
}

extension RelayCommand {
    /// The federation the flags describe, if any.
    func flagFederation() throws -> FederationSpec? {
        guard let federation else { return nil }
        return FederationSpec(
            network: federation, listen: federationListen, gateways: federationGateway, keyFiles: federationKeyFile,
            exports: ExportTable(try export.map { try FederationConfig.exportFlag($0) }))
    }

    /// Every federation from the file and the flags, checked, with their keyrings loaded.
    func loadFederations(localNetwork: String) throws -> [GatewayConfiguration] {
        var specs: [FederationSpec] = []
        if let federationConfig {
            let text: String
            do {
                text = try String(contentsOfFile: federationConfig, encoding: .utf8)
            } catch {
                throw FederationConfigError(line: nil, "cannot read \(federationConfig): \(error.localizedDescription)")
            }
            do {
                specs += try FederationConfig.parse(text)
            } catch {
                throw FederationConfigError(line: nil, "\(federationConfig): \(error)")
            }
        }
        if let flagged = try flagFederation() { specs.append(flagged) }
        try FederationConfig.validate(specs, localNetwork: localNetwork)
        return try specs.map { spec in
            do {
                return GatewayConfiguration(spec: spec, keyring: try Keyring.load(fromFiles: spec.keyFiles))
            } catch {
                throw FederationConfigError(line: nil, "federation \(spec.network): \(error)")
            }
        }
    }
}

private func hostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count) == 0 else { return "relay" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

private func splitHostPort(_ address: String) -> (String, Int)? {
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
        (0...65535).contains(port)
    else { return nil }
    var host = String(address[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    return host.isEmpty ? nil : (host, port)
}

private func isLoopback(_ host: String) -> Bool {
    host == "localhost" || host == "::1" || host.hasPrefix("127.")
}

/// The relay's output buffers are 64 KiB pieces, allocated and freed at the rate of the traffic.
/// With glibc's defaults, freed memory at the top of the heap is returned to the kernel as soon
/// as 128 KiB are free, and larger blocks are fresh `mmap`s, so the next buffers fault their
/// pages in again (up to a fifth of a relay's CPU, measured with perf: Docs/benchmarks.md). Keep
/// up to 16 MiB of freed memory, and serve blocks below 2 MiB from the heap.
/// (`mallopt` is in glibc's malloc.h, which the Glibc module does not export: looked up by name.)
private func tuneAllocator() {
    #if canImport(Glibc)
    typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
    let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
    let trimThreshold: Int32 = -1, mmapThreshold: Int32 = -3  // M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
    _ = mallopt(trimThreshold, 16 << 20)
    _ = mallopt(mmapThreshold, 2 << 20)
    #endif
}
