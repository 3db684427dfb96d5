import Logging
import NIOCore
import ServiceLifecycle
import UnixSignals
import SkeinCrypto

// The relay's parts as swift-service-lifecycle services (RelayService.start lists them in order;
// a graceful shutdown stops them in reverse). Each is started before the group runs, so its
// `run` waits for the shutdown and then stops its part. Cancellation (instead of a graceful
// shutdown) means hurry: each still stops its part, without waiting for what it would wait for.

/// The mesh's peer links and gossip socket: closed last, after everything that used them.
struct MeshLinksService: Service {
    let mesh: MeshNode

    func run() async throws {
        try? await gracefulShutdown()
        await mesh.close()
    }
}

/// One federation's gateway links.
struct GatewayService: Service {
    let gateway: GatewayNode

    func run() async throws {
        try? await gracefulShutdown()
        await gateway.close()
    }
}

/// The client listeners and connections: stops accepting, drains, closes every connection.
struct ClientsService: Service {
    let server: ClientServer
    let drainTimeout: TimeAmount
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        logger.info("relay shutting down: draining the requests in flight")
        await server.stopListening()
        // The loop reports when the last request in flight is answered, or the time is up.
        _ = await server.drain(within: drainTimeout)
        await server.closeAll(reason: "relay shutting down")
    }
}

/// The operators' HTTP endpoint.
struct AdminService: Service {
    let endpoint: AdminServer

    func run() async throws {
        try? await gracefulShutdown()
        await endpoint.close()
    }
}

/// Membership in the mesh: the first part to stop, by leaving, so other relays hear "left"
/// (never "dead") and send no new work while this one drains.
struct MembershipService: Service {
    let mesh: MeshNode
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        logger.info("leaving the mesh")
        await mesh.leave()
    }
}

/// SIGHUP: reads the key files again (the network's, and each federation's) and hands the
/// keyrings to the relay. A file that no longer reads keeps the current keyring, with an error.
struct KeyReloader: Service {
    let relay: RelayService
    /// Trapping SIGHUP since before the relay started.
    let signals: UnixSignalsSequence
    let logger: Logger

    func run() async throws {
        let configuration = relay.server.configuration
        let federations = configuration.federations.map { ($0.spec.network, $0.spec.keyFiles) }
        for await _ in signals.cancelOnGracefulShutdown() {
            for (network, files) in federations {
                do {
                    await relay.reload(federation: network, keyring: try Keyring.load(fromFiles: files))
                } catch {
                    logger.error("SIGHUP: keeping the current federation keyring", metadata: ["federation": "\(network)", "error": "\(error)"])
                }
            }
            guard !configuration.keyFiles.isEmpty else {
                logger.warning("SIGHUP: a --dev relay has no key files to reload")
                continue
            }
            do {
                await relay.reload(keyring: try Keyring.load(fromFiles: configuration.keyFiles))
            } catch {
                logger.error("SIGHUP: keeping the current keyring", metadata: ["error": "\(error)"])
            }
        }
    }
}
