import Logging
import Metrics
import NIOCore
import NIOPosix
import SkeinCrypto
import SkeinFederation
import SkeinMembership
import SkeinRouting
import SkeinWire

/// The host of the relay loop, and the SwiftNIO shell of local connections: accepts them,
/// decodes their frames, feeds them to `RelayLoop` with every other shell's inputs
/// (`RelayInputSink`), and carries out the loop's actions on client channels and on the
/// transports (`MeshTransport`, `LinkTransport`).
///
/// Everything runs on one event loop, the loop's, so it needs no locks and frames from one
/// connection reach every destination in order. Output for each connection is encoded into one
/// buffer per read batch and flushed once, at the end of the batch.
public final class ClientServer: RelayInputSink, @unchecked Sendable {
    // @unchecked: all mutable state is confined to `eventLoop` (asserted in debug builds).
    public let eventLoop: any EventLoop
    let configuration: RelayConfiguration
    let logger: Logger
    @exclusivity(unchecked) private(set) var loop: RelayLoop
    @exclusivity(unchecked) private var clients: [ConnectionID: ClientChannel] = [:]
    @exclusivity(unchecked) private var dirty: [ClientChannel] = []
    @exclusivity(unchecked) private var lastClient: ClientChannel?
    /// When the peer-link read being handled began (see `receivedPeer`).
    @exclusivity(unchecked) private var peerReadTime: NIODeadline?
    @exclusivity(unchecked) private var actions: [RelayAction] = []
    @exclusivity(unchecked) private var nextConnection: UInt64 = 0
    @exclusivity(unchecked) private var wakeup: (at: NIODeadline, task: Scheduled<Void>)?
    @exclusivity(unchecked) private var listeners: [any Channel] = []
    private let metrics = RelayMetrics()
    let limits: WireLimits
    /// The mesh's links and gossip socket, once the relay is in a mesh (on the event loop).
    @exclusivity(unchecked) private var mesh: (any MeshTransport)?
    /// The gateway links of the relay's federations, if it is a gateway (on the event loop).
    @exclusivity(unchecked) private var gateways: [any LinkTransport] = []
    /// Shutdown: completed when the loop reports `.drained` (with the requests left) and
    /// `.allClosed` (`drain`, `closeAll`).
    @exclusivity(unchecked) private var drained: EventLoopPromise<Int>?
    @exclusivity(unchecked) private var allClosed: EventLoopPromise<Int>?

    public init(configuration: RelayConfiguration, eventLoop: any EventLoop, logger: Logger) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.loop = RelayLoop(core: RelayCore(settings: configuration.settings, zone: configuration.mesh?.zone ?? "", seed: SecureRandom.uint64()))
        self.limits = configuration.settings.decoderLimits
        actions.reserveCapacity(64)
    }

    // MARK: - Listening

    /// Binds every configured listener. Fails only if none could be bound.
    public func start() async throws {
        var bound: [any Channel] = []
        var failures: [String] = []
        var port = configuration.clientPort
        for host in configuration.clientHosts {
            do {
                // With port 0 the first bound address picks the port; the others use the same.
                let channel = try await bootstrap().bind(host: host, port: port).get()
                if port == 0, let chosen = channel.localAddress?.port { port = chosen }
                bound.append(channel)
                logger.info("listening for clients", metadata: ["address": "\(host):\(channel.localAddress?.port ?? configuration.clientPort)"])
            } catch {
                failures.append("\(host):\(configuration.clientPort): \(error)")
                logger.warning("cannot listen for clients", metadata: ["address": "\(host):\(configuration.clientPort)", "error": "\(error)"])
            }
        }
        if let path = configuration.clientSocket {
            do {
                let channel = try await bootstrap().bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
                bound.append(channel)
                logger.info("listening for clients", metadata: ["socket": "\(path)"])
            } catch {
                for channel in bound { try? await channel.close() }
                throw RelayStartupError.cannotListen(["\(path): \(error)"])
            }
        }
        guard !bound.isEmpty else { throw RelayStartupError.cannotListen(failures) }
        let listeners = bound
        try await eventLoop.submit { self.listeners = listeners }.get()
    }

    /// The TCP port actually bound (useful with `clientPort: 0`).
    public var boundPort: Int? {
        get async {
            try? await eventLoop.submit { self.listeners.lazy.compactMap { $0.localAddress?.port }.first }.get()
        }
    }

    /// The TCP ports of every listener (on the event loop).
    var listenerPorts: [Int] {
        listeners.compactMap { $0.localAddress?.port }
    }

    private func bootstrap() -> ServerBootstrap {
        let highWater = configuration.sendBufferHighWater
        return ServerBootstrap(group: eventLoop, childGroup: eventLoop)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: highWater / 2, high: highWater))
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 1 << 20))
            .childChannelOption(.maxMessagesPerRead, value: 8)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ClientConnectionHandler(server: self))
                }
            }
    }

    /// Stops accepting new connections.
    public func stopListening() async {
        let listeners = try? await eventLoop.submit { () -> [any Channel] in
            defer { self.listeners = [] }
            return self.listeners
        }.get()
        for listener in listeners ?? [] { try? await listener.close() }
        if let path = configuration.clientSocket {
            _ = path.withCString { unlink($0) }
        }
    }

    /// Requests still waiting for an answer.
    public var pendingRequests: Int {
        get async { (try? await eventLoop.submit { self.core.pendingRequestCount }.get()) ?? 0 }
    }

    /// Shutdown: lets the requests in flight finish for up to `within`, and returns when the loop
    /// says they have (or the time is up, or the task is cancelled), with how many were left.
    public func drain(within: TimeAmount) async -> Int {
        await awaitLoop(\.drained) { now in .drain(until: now + within) }
    }

    /// Ends every connection with a CLOSE carrying `reason`, and returns when the loop says the
    /// last one is gone, or after `within` (a socket that does not close), or on cancellation.
    public func closeAll(reason: String, within: TimeAmount = .seconds(2)) async {
        _ = await awaitLoop(\.allClosed, within: within) { _ in .closeAll(reason: reason) }
    }

    /// Hands the loop `input` and waits for the report that `slot`'s promise stands for.
    private func awaitLoop(
        _ slot: ReferenceWritableKeyPath<ClientServer, EventLoopPromise<Int>?>, within cap: TimeAmount? = nil,
        _ input: @escaping @Sendable (NIODeadline) -> RelayInput
    ) async -> Int {
        let promise = eventLoop.makePromise(of: Int.self)
        let future = promise.futureResult
        return await withTaskCancellationHandler {
            eventLoop.execute {
                // One waiter per report: an earlier one is answered now rather than left hanging.
                self[keyPath: slot]?.succeed(-1)
                self[keyPath: slot] = promise
                if let cap {
                    let timeout = self.eventLoop.scheduleTask(in: cap) { promise.succeed(-1) }
                    future.whenComplete { _ in timeout.cancel() }
                }
                let now = NIODeadline.now()
                self.loop.handle(input(now), now: now, actions: &self.actions)
                self.perform()
                self.flush()
                self.rescheduleWakeup()
            }
            return (try? await future.get()) ?? 0
        } onCancel: {
            // Hurry: stop waiting, keep the order.
            promise.succeed(-1)
        }
    }

    private var core: RelayCore { _read { yield loop.core } }

    // MARK: - The mesh and federations (wired by RelayService)

    /// Makes the loop a member of the mesh `transport` carries (before it joins).
    func attachMesh(_ mesh: RelayLoopMesh, transport: any MeshTransport) throws {
        eventLoop.preconditionInEventLoop()
        loop = try RelayLoop(core: loop.core, mesh: mesh, seed: SecureRandom.uint64(), now: .now(), generation: wallClockMillis())
        self.mesh = transport
        rescheduleWakeup()
    }

    /// Adds a federation's gateway links.
    func attachGateway(_ transport: any LinkTransport) {
        eventLoop.preconditionInEventLoop()
        gateways.append(transport)
    }

    /// Forgets the transports (they hold this host strongly): the last step of a stop.
    func detachTransports() async {
        try? await eventLoop.submit {
            self.mesh = nil
            self.gateways = []
        }.get()
    }

    /// `/members`, or nil for a relay without a mesh.
    var membersJSON: JSON? {
        get async {
            try? await eventLoop.submit { () -> JSON? in
                self.loop.membership.map { SkeinRelay.membersJSON($0) }
            }.get() ?? nil
        }
    }

    // MARK: - RelayInputSink (on the event loop)

    func input(_ input: RelayInput) {
        loop.handle(input, now: .now(), actions: &actions)
        perform()
        flush()
    }

    /// The clock is read once per link read, as it is once per client read batch, and the
    /// actions of a read's frames are carried out together at its end (`inputsComplete`):
    /// nothing else runs on the loop in between, and nothing needs pausing per frame (the
    /// link's frames are already read). Anything that performs meanwhile performs them too, in
    /// order.
    func inputDeferred(_ input: RelayInput) {
        let now = peerReadTime ?? .now()
        peerReadTime = now
        loop.handle(input, now: now, actions: &actions)
    }

    func peerFrameDeferred(_ frame: PeerFrame, from node: NodeID) {
        let now = peerReadTime ?? .now()
        peerReadTime = now
        loop.receivedPeer(frame, from: node, now: now, actions: &actions)
    }

    func inputsComplete() {
        peerReadTime = nil
        perform()
        flush()
    }

    /// Local clients, for `/status` (on the event loop).
    var clientStatus: RelayStatus.Clients {
        eventLoop.preconditionInEventLoop()
        return RelayStatus.Clients(core)
    }

    public var connectionCount: Int {
        get async { (try? await eventLoop.submit { self.core.connectionCount }.get()) ?? 0 }
    }


    // MARK: - Events from connections (on the event loop)

    func opened(_ channel: any Channel) -> ClientChannel {
        eventLoop.preconditionInEventLoop()
        nextConnection += 1
        let client = ClientChannel(id: ConnectionID(nextConnection), channel: channel)
        clients[client.id] = client
        metrics.connectionsOpened.increment()
        loop.handle(.clientOpened(client.id), now: .now(), actions: &actions)
        perform()
        rescheduleWakeup()  // arms the handshake timeout even if nothing else happens
        return client
    }

    /// `now` is read once per read batch: deadlines need millisecond precision, not a clock
    /// call per frame.
    ///
    /// The actions of a read's frames are carried out together (`receivedBatchEnd`), not once
    /// per frame: a frame from a flat-out publisher yields one or two actions, and carrying them
    /// out one frame at a time was a fifth of the relay's time at 64 B (array swaps, a weak load
    /// of the mesh, copies of each action). Two things still take effect at the frame that
    /// causes them: a frame whose actions stop reading a connection (`pauseReading`, as
    /// backpressure decides, or `disconnect`) has them carried out at once, so the decode loop
    /// stops there and limits hold to the frame; and no more than `deferredInput` bytes of input
    /// wait, so a full subscriber's output is handed to its channel (and its water mark seen)
    /// within that much input, the same order as `ClientChannel.writeChunk`'s granularity.
    /// Returns whether the actions were carried out.
    func received(_ frame: ClientFrame, from client: ClientChannel, now: NIODeadline, deferring: Bool) -> Bool {
        let first = actions.count
        loop.received(frame, from: client.id, now: now, actions: &actions)
        guard !deferring || Self.stopsReading(actions, from: first) else { return false }
        perform()
        return true
    }

    /// Input bytes whose actions may wait for the end of the read (`received`).
    static let deferredInput = 1 << 16

    /// Whether any action from `first` on pauses or closes a connection.
    private static func stopsReading(_ actions: [RelayAction], from first: Int) -> Bool {
        var i = first
        while i < actions.count {
            switch actions[i] {
            case .pauseReading, .disconnect: return true
            default: i += 1
            }
        }
        return false
    }

    /// The end of a connection's read (or of what it could decode): carry out what its frames
    /// asked for.
    func receivedBatchEnd() {
        perform()
    }

    func malformed(_ client: ClientChannel, error: WireError) {
        loop.handle(.clientMalformed(client.id, error), now: .now(), actions: &actions)
        perform()
    }

    func closed(_ client: ClientChannel, unparsedBytes: Int) {
        clients[client.id] = nil
        if lastClient === client { lastClient = nil }
        client.isClosed = true
        loop.handle(.clientClosed(client.id, unparsedBytes: unparsedBytes), now: .now(), actions: &actions)
        perform()
        flush()
    }

    func writabilityChanged(_ client: ClientChannel, writable: Bool) {
        loop.handle(.clientWritability(client.id, writable: writable), now: .now(), actions: &actions)
        perform()
        flush()
    }

    /// Writes every buffer filled during this batch.
    func flush() {
        // Writing can re-enter the server (a write that crosses a water mark reports
        // writability at once), so take the list before walking it.
        while !dirty.isEmpty {
            var batch: [ClientChannel] = []
            swap(&batch, &dirty)
            for client in batch { client.flush() }
            if dirty.isEmpty {
                batch.removeAll(keepingCapacity: true)
                dirty = batch
            }
        }
        rescheduleWakeup()
    }

    // MARK: - Carrying out actions

    private func perform() {
        // Closing a socket re-enters the server at once (channelInactive → `closed`), which
        // performs its own actions: take this batch first so nothing is performed twice.
        while !actions.isEmpty {
            var batch: [RelayAction] = []
            swap(&batch, &actions)
            perform(batch)
            if actions.isEmpty {
                batch.removeAll(keepingCapacity: true)
                actions = batch
            }
        }
    }

    private func perform(_ batch: [RelayAction]) {
        for action in batch {
            switch action {
            case .send(let id, let frame):
                guard let client = client(id), !client.isClosed else { continue }
                if !client.isDirty {
                    client.isDirty = true
                    dirty.append(client)
                }
                frame.encode(into: &client.outbox)
                if client.outbox.readableBytes >= ClientChannel.writeChunk { client.writeChunk() }
            case .disconnect(let id):
                guard let client = clients[id], !client.isClosed, !client.isClosing else { continue }
                client.closeAfterWrites(within: configuration.settings.slowConsumerTimeout)
            case .pauseReading(let id):
                clients[id]?.setReading(false)
            case .resumeReading(let id):
                clients[id]?.setReading(true)
            case .sendPeer(let relay, let frame):
                // Gateway links first, then the mesh's; without an established link the loop
                // says where to dial, or gives the relay up (its actions join the next batch).
                if !gateways.isEmpty, gateways.contains(where: { $0.send(frame, toNode: relay) }) { continue }
                if mesh?.send(frame, toNode: relay) != true {
                    loop.handle(.peerUnsent(relay, frame), now: .now(), actions: &actions)
                }
            case .sendPeerAt(let address, let frame):
                mesh?.send(frame, toAddress: address)
            case .sendDatagram(let payload, let address):
                mesh?.sendDatagram(payload, to: address)
            case .resetPeerLinks(let relay, let reason):
                mesh?.resetLinks(to: relay, reason: reason)
            case .report(let event):
                report(event)
            }
        }
    }

    /// The connection's channel; the last one is remembered, as a flood goes to one subscriber
    /// at a time.
    private func client(_ id: ConnectionID) -> ClientChannel? {
        if let lastClient, lastClient.id == id { return lastClient }
        lastClient = clients[id]
        return lastClient
    }

    private func report(_ event: RelayEvent) {
        switch event {
        case .handshakeCompleted(let id, let cluster):
            logger.debug("client connected", metadata: ["connection": "\(id)", "cluster": "\(cluster)"])
        case .handshakeRejected(let id, let reason):
            metrics.handshakesRejected.increment()
            logger.info("handshake rejected", metadata: ["connection": "\(id)", "reason": "\(reason)"])
        case .protocolViolation(let id, let reason):
            metrics.protocolViolations.increment()
            logger.notice("closing connection", metadata: ["connection": "\(id)", "reason": "\(reason)"])
        case .slowConsumer(let id, let reason):
            metrics.slowConsumers.increment()
            logger.notice("closing slow consumer", metadata: ["connection": "\(id)", "reason": "\(reason)"])
        case .holdsRefused(let relay):
            // Per frame, so at debug level: a relay past the bound sends many.
            logger.debug("hold ignored: that relay already holds the most streams here", metadata: ["relay": "\(relay)"])
        case .surveyRefused(let relay):
            // Per frame, so at debug level, as for holds.
            logger.debug("survey not carried out: that relay already has the most surveys here", metadata: ["relay": "\(relay)"])
        case .connectionClosed(let id, let graceful):
            logger.debug("client disconnected", metadata: ["connection": "\(id)", "graceful": "\(graceful)"])
        case .requestTimedOut:
            metrics.requestTimeouts.increment()
        case .lateReplyDropped:
            metrics.lateReplies.increment()
        case .broadcastWithoutMembers:
            metrics.unroutable.increment()
        case .requestRerouted(let cluster, let relay):
            metrics.rerouted.increment()
            logger.debug("request rerouted", metadata: ["cluster": "\(cluster)", "from": "\(relay)"])
        case .federationRefused(let network, let kind, let name):
            Counter(label: "skein_federation_refused_total", dimensions: [("network", network), ("kind", "\(kind)")]).increment()
            logger.notice("refused: not exported", metadata: ["network": "\(network)", "kind": "\(kind)", "name": "\(name)"])
        case .federationDropped(let network, let reason):
            Counter(label: "skein_federation_dropped_total", dimensions: [("network", network)]).increment()
            logger.debug("federation: dropped", metadata: ["network": "\(network)", "reason": "\(reason)"])
        case .federationLinkChanged(let network, let up):
            if up {
                logger.info("network reachable", metadata: ["network": "\(network)"])
            } else {
                Counter(label: "skein_federation_unreachable_total", dimensions: [("network", network)]).increment()
                logger.warning("network unreachable: no gateway link left", metadata: ["network": "\(network)"])
            }
        case .membership(let event):
            logMembershipEvent(event, logger: logger)
        case .metadataRejected(let reason):
            logger.error("cannot advertise this relay's clusters and topics", metadata: ["error": "\(reason)"])
        case .drained(let unanswered):
            if unanswered > 0 { logger.notice("drain time is up", metadata: ["unanswered-requests": "\(unanswered)"]) }
            drained?.succeed(unanswered)
            drained = nil
        case .allClosed:
            allClosed?.succeed(0)
            allClosed = nil
        }
    }

    /// What `/status` shows of the federations: the core's view of every gateway link, and
    /// what this network exports to each (on the event loop).
    var federationRows: (links: [(node: NodeID, network: String, designated: Bool, theirInterest: Int, ourInterest: Int)], exports: [String: [ExportRule]]) {
        (core.foreignGatewayStatus, core.gatewayAdvertisement)
    }

    /// Remote relays and this relay's requests in flight to each, for `/status`.
    var routingStatus: [(RemoteRelay, Int)] {
        core.remoteRelays.values.sorted { $0.name < $1.name }.map { ($0, core.requestsInFlight(to: $0.id)) }
    }

    // MARK: - Timers

    private func rescheduleWakeup() {
        guard let next = loop.nextDeadline else { return }
        if let wakeup, wakeup.at <= next { return }
        wakeup?.task.cancel()
        let task = eventLoop.scheduleTask(deadline: next) { [self] in
            self.wakeup = nil
            self.loop.handle(.timer, now: .now(), actions: &self.actions)
            self.perform()
            self.flush()
        }
        wakeup = (next, task)
    }
}

/// The shell's view of one connection: its channel and the output gathered in this batch.
final class ClientChannel {
    let id: ConnectionID
    let channel: any Channel
    /// Set by the handler, so a resumed connection can decode what it had already read.
    @exclusivity(unchecked) weak var handler: ClientConnectionHandler?
    @exclusivity(unchecked) var outbox: ByteBuffer
    @exclusivity(unchecked) var isDirty = false
    /// `writeChunk` handed output to the channel that `flush` has not flushed yet.
    @exclusivity(unchecked) var wroteChunks = false
    @exclusivity(unchecked) var isClosing = false
    @exclusivity(unchecked) var isClosed = false
    @exclusivity(unchecked) private(set) var reading = true

    init(id: ConnectionID, channel: any Channel) {
        self.id = id
        self.channel = channel
        self.outbox = channel.allocator.buffer(capacity: 0)
    }

    /// Output gathered during a batch is handed to the channel in pieces of about this size,
    /// and flushed at the end of the batch. A peer-link read can carry a megabyte of events for
    /// one subscriber: one buffer that large would be a fresh `mmap` (page faults on every
    /// write) and grow by copying; pieces of 64 KiB come from the allocator's heap.
    static let writeChunk = 1 << 16

    func flush() {
        isDirty = false
        guard outbox.readableBytes > 0, !isClosed else {
            if wroteChunks && !isClosed { channel.flush() }
            wroteChunks = false
            return
        }
        wroteChunks = false
        let buffer = outbox
        outbox = channel.allocator.buffer(capacity: min(max(buffer.readableBytes, 1024), Self.writeChunk + 1024))
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// Hands what is gathered to the channel without flushing it (`flush` at the end of the
    /// batch writes it). A write may report writability at once, which is what backpressure needs.
    func writeChunk() {
        guard !isClosed, !isClosing else { return }
        let buffer = outbox
        outbox = channel.allocator.buffer(capacity: Self.writeChunk + 1024)
        wroteChunks = true
        channel.write(buffer, promise: nil)
    }

    /// Closes once everything queued has been written (the spec's graceful close: deliver what
    /// was accepted, then `02`), or after `limit` if the peer does not read it.
    func closeAfterWrites(within limit: TimeAmount) {
        isClosing = true
        setReading(false)
        isDirty = false
        let channel = self.channel
        let giveUp = channel.eventLoop.scheduleTask(in: limit) { channel.close(promise: nil) }
        // An empty write completes after every earlier write, so this also waits for them.
        channel.writeAndFlush(outbox).whenComplete { _ in
            giveUp.cancel()
            channel.close(promise: nil)
        }
        outbox = channel.allocator.buffer(capacity: 0)
    }

    func setReading(_ on: Bool) {
        guard on != reading, !isClosed else { return }
        reading = on
        let options = channel.syncOptions
        try? options?.setOption(.autoRead, value: on)
        if on {
            // Frames already read but not decoded wait in the handler; decode them on the
            // next tick (not inside the action that resumed us), then read more.
            let this = NIOLoopBound(self, eventLoop: channel.eventLoop)
            channel.eventLoop.execute {
                guard this.value.reading, !this.value.isClosed else { return }
                this.value.handler?.resumeDecoding()
                this.value.channel.read()
            }
        }
    }
}

/// Decodes one connection's byte stream into frames for the server.
final class ClientConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let server: ClientServer
    @exclusivity(unchecked) private var client: ClientChannel?
    @exclusivity(unchecked) private var cumulation: ByteBuffer?
    @exclusivity(unchecked) private var names = NameCache()

    init(server: ClientServer) {
        self.server = server
    }

    func channelActive(context: ChannelHandlerContext) {
        client = server.opened(context.channel)
        client?.handler = self
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let client, !client.isClosing else { return }
        var incoming = unwrapInboundIn(data)
        if cumulation == nil || cumulation!.readableBytes == 0 {
            cumulation = incoming
        } else {
            cumulation!.writeBuffer(&incoming)
        }
        decodeBuffered()
    }

    /// Decodes and routes every complete frame buffered, until the connection is paused
    /// (backpressure: the rest waits here, so limits hold to the frame) or closing.
    func decodeBuffered() {
        guard let client else { return }
        let limits = server.limits
        let now = NIODeadline.now()
        // Input decoded since the server last carried out actions (`ClientServer.received`).
        var mark = cumulation?.readerIndex ?? 0
        do {
            while client.reading, !client.isClosing, !client.isClosed, cumulation != nil,
                let frame = try ClientFrame.decode(from: &cumulation!, limits: limits, names: &names)
            {
                let position = cumulation?.readerIndex ?? 0
                if server.received(frame, from: client, now: now, deferring: position - mark < ClientServer.deferredInput) {
                    mark = cumulation?.readerIndex ?? 0
                }
            }
        } catch {
            server.malformed(client, error: error)
        }
        server.receivedBatchEnd()
        // A frame may have closed the connection, and channelInactive cleared `cumulation`.
        if cumulation?.readableBytes == 0 {
            cumulation = nil
        } else if let readerIndex = cumulation?.readerIndex, readerIndex > 1 << 16 {
            cumulation!.discardReadBytes()
        }
    }

    /// The connection was resumed after backpressure.
    func resumeDecoding() {
        decodeBuffered()
        server.flush()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        server.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let client {
            server.closed(client, unparsedBytes: client.isClosing ? 0 : (cumulation?.readableBytes ?? 0))
        }
        client = nil
        cumulation = nil
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if let client {
            server.writabilityChanged(client, writable: context.channel.isWritable)
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Socket errors (resets) end this connection only.
        context.close(promise: nil)
    }
}

/// Counters for the relay's client side, reported through swift-metrics.
struct RelayMetrics {
    let connectionsOpened = Counter(label: "skein_client_connections_total")
    let handshakesRejected = Counter(label: "skein_client_handshakes_rejected_total")
    let protocolViolations = Counter(label: "skein_client_protocol_violations_total")
    let slowConsumers = Counter(label: "skein_client_slow_consumers_total")
    let requestTimeouts = Counter(label: "skein_requests_timed_out_total")
    let lateReplies = Counter(label: "skein_late_replies_dropped_total")
    let unroutable = Counter(label: "skein_broadcasts_without_members_total")
    let rerouted = Counter(label: "skein_requests_rerouted_total")
}
