import DequeModule
import NIOConcurrencyHelpers
import NIOCore
internal import NIOPosix
internal import SkeinFederation
internal import SkeinWire

/// One connection to a relay. Safe to use from any number of tasks at once.
///
/// Output is encoded into one buffer under a lock and written by the event loop once per
/// tick, so many small publishes cost one system call. When the relay reads more slowly than
/// the application writes, `publish`, `broadcast` and tunnel sends wait: memory stays bounded.
public final class SkeinConnection: Sendable {
    let channel: any Channel
    let shared: NIOLockedValueBox<SharedState>
    let options: ConnectionOptions
    /// The cluster this connection is a member of; empty for a plain client.
    public let cluster: String
    /// Runs tasks on this connection's event loop. A task that calls this connection from it
    /// (`Task(executorPreference: connection.taskExecutor) { … }`) sends without waking another
    /// thread and is resumed by the reply on the same thread: the lowest latency, as long as
    /// the task does not block.
    public var taskExecutor: any TaskExecutor { executor }
    let executor: EventLoopExecutor

    init(channel: any Channel, cluster: String, options: ConnectionOptions) {
        self.channel = channel
        self.cluster = cluster
        self.options = options
        self.executor = EventLoopExecutor(channel.eventLoop)
        self.shared = NIOLockedValueBox(SharedState(outbox: channel.allocator.buffer(capacity: 4096)))
    }

    /// Connects with the protocol `options` ask for: `automatic` tries `skein/2`, then `skein/1`
    /// if the relay refuses it (a relay before `skein/2` answers DENY), then `v1.0-draft2` (an
    /// Iris node), each on a new connection.
    static func open(
        relay: RelayEndpoint, cluster: String, handler: (any ClusterHandler)?, options: ConnectionOptions
    ) async throws -> SkeinConnection {
        let order: [ProtocolDialect]
        switch options.protocolVersion {
        case .irisDraft2: order = [.iris]
        case .skein1: order = [.skein1]
        case .skein2: order = [.skein2]
        case .automatic: order = [.skein2, .skein1, .iris]
        }
        for dialect in order.dropLast() {
            do {
                return try await open(relay: relay, cluster: cluster, handler: handler, options: options, dialect: dialect)
            } catch SkeinError.Code.denied {
                continue
            }
        }
        return try await open(relay: relay, cluster: cluster, handler: handler, options: options, dialect: order.last!)
    }

    /// The protocol version agreed with the relay: `skein/2`, `skein/1` or `v1.0-draft2`.
    public var protocolVersion: String { shared.withLockedValue { $0.dialect.version } }

    var dialect: ProtocolDialect { shared.withLockedValue { $0.dialect } }

    private static func open(
        relay: RelayEndpoint, cluster: String, handler: (any ClusterHandler)?, options: ConnectionOptions,
        dialect: ProtocolDialect
    ) async throws -> SkeinConnection {
        let group = options.eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: SkeinConnection.self)
        let bootstrap = ClientBootstrap(group: group)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.writeBufferWaterMark, value: .init(low: options.sendBufferHighWater / 2, high: options.sendBufferHighWater))
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 16384, maximum: 1 << 20))
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let connection = SkeinConnection(channel: channel, cluster: cluster, options: options)
                    let inbound = InboundHandler(connection: connection, handler: handler, handshake: promise, relay: relay)
                    try channel.pipeline.syncOperations.addHandler(inbound)
                }
            }
        let channel: any Channel
        do {
            switch relay {
            case .tcp(let host, let port):
                channel = try await bootstrap.connect(host: host, port: port).get()
            case .unixSocket(let path):
                channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            }
        } catch {
            promise.fail(error)
            throw SkeinError.cannotConnect("\(relay): \(error)")
        }
        // INIT goes out first; the handler completes `promise` on the relay's INIT or DENY.
        var init_ = channel.allocator.buffer(capacity: 64)
        ClientFrame.initialize(magic: RelayProtocol.clientMagic, version: dialect.version, cluster: cluster)
            .encode(into: &init_)
        channel.writeAndFlush(init_, promise: nil)
        // The handler enforces `handshakeTimeout` on the channel's event loop, where it also sees
        // the answer: a timer here could fire after a successful handshake and close it.
        return try await promise.futureResult.get()
    }

    // MARK: - Requests

    /// Sends a request to one member of `cluster` and waits for its answer. The relay owns the
    /// deadline: the answer is the reply, or `SkeinError.remoteFault`, or `SkeinError.timedOut`.
    ///
    /// Inside a span (swift-distributed-tracing), on a `skein/2` connection, the request carries
    /// the trace context in its headers, and the member's handler continues it.
    public func request(cluster: String, _ body: ByteBuffer, timeout: Duration) async throws -> ByteBuffer {
        try await exchange(cluster: cluster, body, headers: Headers(), timeout: timeout).body
    }

    /// `request(cluster:_:timeout:)` with headers (`skein/2`; on an older connection they are not
    /// sent), answered with the reply's body and headers.
    public func request(cluster: String, _ body: ByteBuffer, headers: Headers, timeout: Duration) async throws -> Message {
        try await exchange(cluster: cluster, body, headers: headers, timeout: timeout)
    }

    public func request(cluster: String, _ body: String, headers: Headers, timeout: Duration) async throws -> Message {
        try await exchange(cluster: cluster, ByteBuffer(string: body), headers: headers, timeout: timeout)
    }

    private func exchange(cluster: String, _ body: ByteBuffer, headers: Headers, timeout: Duration) async throws -> Message {
        try checkSize(body)
        try check(headers)
        let headers = headers.withTraceContext()
        let millis = timeout.wholeMilliseconds
        let id = try shared.withLockedValue { state throws(SkeinError) -> UInt64 in
            try state.checkOpen()
            let id = state.nextRequestID
            state.nextRequestID += 1
            return id
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Message, any Error>) in
                let failure = shared.withLockedValue { state -> (any Error)? in
                    if let failure = state.failure { return failure }
                    // Cancelled before the continuation was registered: `onCancel` found
                    // nothing to resume, so the request must not go out and wait its full timeout.
                    if Task.isCancelled { return CancellationError() }
                    state.requests[id] = continuation
                    if headers.isEmpty || state.dialect < .skein2 {
                        enqueueLocked(&state, .request(id: id, cluster: cluster, body: body, timeoutMillis: millis))
                    } else {
                        enqueueLocked(&state, .hrequest(id: id, cluster: cluster, headers: headers.entries, body: body, timeoutMillis: millis))
                    }
                    return nil
                }
                if let failure { continuation.resume(throwing: failure) }
            }
        } onCancel: {
            // The relay will still answer; the answer is dropped here.
            shared.withLockedValue { $0.requests.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
    }

    public func request(cluster: String, _ body: String, timeout: Duration) async throws -> ByteBuffer {
        try await request(cluster: cluster, ByteBuffer(string: body), timeout: timeout)
    }

    public func request(cluster: String, _ body: some Sequence<UInt8>, timeout: Duration) async throws -> ByteBuffer {
        try await request(cluster: cluster, ByteBuffer(bytes: body), timeout: timeout)
    }

    // MARK: - Broadcast and publish

    /// Delivers `message` to every member of `cluster` (at most once each, FIFO per sender).
    public func broadcast(cluster: String, _ message: ByteBuffer) async throws {
        try checkSize(message)
        try await send(.broadcast(cluster: cluster, message: message))
    }

    /// `broadcast(cluster:_:)` with headers (`skein/2`; on an older connection they are not sent).
    public func broadcast(cluster: String, _ message: ByteBuffer, headers: Headers) async throws {
        try checkSize(message)
        try await send(.broadcast(cluster: cluster, message: message), headers: headers) {
            .hbroadcast(cluster: cluster, headers: $0, message: message)
        }
    }

    public func broadcast(cluster: String, _ message: String) async throws {
        try await broadcast(cluster: cluster, ByteBuffer(string: message))
    }

    /// Delivers `event` to every subscription of `topic` (at most once each, FIFO per publisher).
    public func publish(topic: String, _ event: ByteBuffer) async throws {
        try checkSize(event)
        try await send(.publish(topic: topic, event: event))
    }

    /// `publish(topic:_:)` with headers (`skein/2`; on an older connection they are not sent).
    /// Subscribers on `skein/2` receive them in ``Subscription/Event/headers``.
    public func publish(topic: String, _ event: ByteBuffer, headers: Headers) async throws {
        try checkSize(event)
        try await send(.publish(topic: topic, event: event), headers: headers) {
            .hpublish(topic: topic, headers: $0, event: event)
        }
    }

    public func publish(topic: String, _ event: String, headers: Headers) async throws {
        try await publish(topic: topic, ByteBuffer(string: event), headers: headers)
    }

    public func publish(topic: String, _ event: String) async throws {
        try await publish(topic: topic, ByteBuffer(string: event))
    }

    /// Subscribes this connection to `topic`. Iterate the result to receive events (or its
    /// ``Subscription/events`` for each event's topic); ending the iteration (or calling
    /// `unsubscribe()`) unsubscribes.
    ///
    /// On a `skein/2` connection `topic` may be a pattern: `*` stands for exactly one token
    /// (`orders.*.paid`) and a last `>` for one or more (`metrics.>`); tokens are separated by
    /// `.`. A pattern that is not one (`a..*`, `a.>.b`) ends the subscription with
    /// `invalidName`. If the connection asked for the newest protocol (`automatic`) and the
    /// relay speaks an older one, a pattern throws `invalidName` at once: the relay would read it
    /// as a plain topic of that name. A connection pinned to `skein1` or `irisDraft2` subscribes
    /// to topics by name only, as Iris does: there `a.*` is the topic named `a.*`.
    public func subscribe(topic: String) async throws -> Subscription {
        let subscription = try shared.withLockedValue { state throws(SkeinError) -> Subscription in
            try state.checkOpen()
            guard state.subscriptions[topic] == nil else { throw SkeinError.alreadySubscribed(topic: topic) }
            // Asked for the newest protocol and got an older one: the relay would read a pattern
            // as the topic of that name. (A connection pinned to an older version asked for that.)
            if options.protocolVersion == .automatic, state.dialect < .skein2,
                TopicPattern.isPattern(FederatedName(topic, localNetwork: "").name)
            {
                throw SkeinError.invalidName(
                    "\(topic.debugDescription) is a pattern, and the relay speaks \(state.dialect.version), not skein/2")
            }
            let subscription = Subscription(topic: topic, connection: self, buffer: options.receiveBuffer)
            state.subscriptions[topic] = subscription.feed
            enqueueLocked(&state, .subscribe(topic: topic))
            return subscription
        }
        try await waitForRoom()
        return subscription
    }

    func unsubscribe(topic: String, feed: EventFeed) {
        shared.withLockedValue { state in
            guard state.subscriptions[topic] === feed else { return }
            state.subscriptions[topic] = nil
            if state.failure == nil {
                enqueueLocked(&state, .unsubscribe(topic: topic))
            }
        }
        channel.eventLoop.execute { self.inbound?.feedResumed(feed) }
    }

    // MARK: - Tunnels

    /// Opens a tunnel to one member of `cluster`. Throws `SkeinError.timedOut` if no member
    /// accepted it within `timeout`.
    public func tunnel(cluster: String, timeout: Duration) async throws -> Tunnel {
        let tunnel = try shared.withLockedValue { state throws(SkeinError) -> Tunnel in
            try state.checkOpen()
            let id = state.nextTunnelID
            state.nextTunnelID += 1
            let tunnel = Tunnel(id: id, connection: self)
            state.tunnels[id] = tunnel
            enqueueLocked(&state, .tunnelInit(tunnelID: id, cluster: cluster, timeoutMillis: timeout.wholeMilliseconds))
            return tunnel
        }
        try await tunnel.waitUntilBuilt()
        return tunnel
    }

    /// Allocates a tunnel id for a tunnel a member accepts.
    func acceptTunnel(buildID: UInt64, chunkLimit: UInt64) -> Tunnel? {
        shared.withLockedValue { state -> Tunnel? in
            guard state.failure == nil else { return nil }
            let id = state.nextTunnelID
            state.nextTunnelID += 1
            let tunnel = Tunnel(id: id, connection: self)
            tunnel.built(chunkLimit: chunkLimit)
            state.tunnels[id] = tunnel
            enqueueLocked(&state, .tunnelConfirm(buildID: buildID, tunnelID: id))
            enqueueLocked(&state, .tunnelAllow(tunnelID: id, bytes: options.tunnelWindow))
            return tunnel
        }
    }

    func forgetTunnel(_ id: UInt64) {
        shared.withLockedValue { _ = $0.tunnels.removeValue(forKey: id) }
    }

    // MARK: - Close

    /// Closes the connection gracefully: the relay unregisters it, delivers what it already
    /// accepted, and acknowledges. Pending requests fail with `connectionClosed`.
    public func close() async throws {
        let sent = shared.withLockedValue { state -> Bool in
            guard state.failure == nil, !state.closeSent else { return false }
            state.closeSent = true
            enqueueLocked(&state, .close)
            return true
        }
        if sent {
            // The relay answers `02 00` and closes; if it does not, stop waiting after a while.
            // The answer queues behind whatever the relay already sent us, so stop holding back.
            channel.eventLoop.execute { self.inbound?.closeRequested() }
            let channel = self.channel
            let giveUp = channel.eventLoop.scheduleTask(in: .seconds(5)) { channel.close(promise: nil) }
            try? await channel.closeFuture.get()
            giveUp.cancel()
        } else {
            try? await channel.closeFuture.get()
        }
    }

    /// Completes when the connection has ended, with the relay's reason (empty if graceful).
    public func waitUntilClosed() async -> String {
        try? await channel.closeFuture.get()
        return shared.withLockedValue { state in
            if let failure = state.failure, failure.code == .connectionClosed { return failure.detail }
            return state.failure.map { "\($0)" } ?? ""
        }
    }

    // MARK: - Output

    /// A message the relay would refuse (it ends the whole connection over an oversized field)
    /// fails alone, here.
    func checkSize(_ message: ByteBuffer) throws(SkeinError) {
        guard message.readableBytes <= options.maxMessageSize else {
            throw SkeinError.messageTooLarge(size: message.readableBytes, limit: options.maxMessageSize)
        }
    }

    /// Why the relay would refuse `headers`, or nil.
    func problem(with headers: Headers) -> SkeinError? {
        do {
            try check(headers)
            return nil
        } catch {
            return error
        }
    }

    /// Headers the relay would refuse (it ends the whole connection over them) fail alone, here.
    func check(_ headers: Headers) throws(SkeinError) {
        if let problem = headers.problem { throw SkeinError.invalidName(problem) }
        guard headers.count <= options.maxHeaders else {
            throw SkeinError.invalidName("\(headers.count) headers exceed the limit of \(options.maxHeaders)")
        }
        let size = headersSize(headers.entries)
        guard size <= options.maxHeaderBytes else {
            throw SkeinError.messageTooLarge(size: size, limit: options.maxHeaderBytes)
        }
    }

    /// Sends `headed` with `headers` and the task's trace context, or `plain` when there are
    /// none or the relay is older than `skein/2` (which drops them).
    private func send(_ plain: ClientFrame, headers: Headers, _ headed: ([Header]) -> ClientFrame) async throws {
        try check(headers)
        let headers = headers.withTraceContext()
        try await send(headers.isEmpty || dialect < .skein2 ? plain : headed(headers.entries))
    }

    /// Queues a frame and waits while the output is above its high-water mark.
    func send(_ frame: ClientFrame) async throws {
        let mustWait = try shared.withLockedValue { state throws(SkeinError) -> Bool in
            try state.checkOpen()
            enqueueLocked(&state, frame)
            return !state.hasRoom(options.sendBufferHighWater)
        }
        if mustWait { try await waitForRoom() }
    }

    /// Queues a frame without waiting (control frames, replies).
    func sendNow(_ frame: ClientFrame) {
        shared.withLockedValue { state in
            guard state.failure == nil else { return }
            enqueueLocked(&state, frame)
        }
    }

    /// Waits while the output is above its high-water mark. Cancellable: the frame is queued
    /// already, only the waiting ends (a publisher held back by a stalled subscriber can stop).
    func waitForRoom() async throws {
        let key = shared.withLockedValue { state in
            defer { state.nextRoomWaiterKey += 1 }
            return state.nextRoomWaiterKey
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let result = shared.withLockedValue { state -> Result<Void, any Error>? in
                    if let failure = state.failure { return .failure(failure) }
                    if state.hasRoom(options.sendBufferHighWater) { return .success(()) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.roomWaiters[key] = continuation
                    return nil
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            shared.withLockedValue { $0.roomWaiters.removeValue(forKey: key) }?.resume(throwing: CancellationError())
        }
    }

    /// Must be called with the lock held.
    func enqueueLocked(_ state: inout SharedState, _ frame: ClientFrame) {
        frame.encode(into: &state.outbox)
        if !state.flushScheduled {
            state.flushScheduled = true
            channel.eventLoop.execute { self.flush() }
        }
    }

    /// On the event loop: writes everything queued since the last flush.
    func flush() {
        let (buffer, waiters) = shared.withLockedValue { state -> (ByteBuffer, [CheckedContinuation<Void, any Error>]) in
            state.flushScheduled = false
            let buffer = state.outbox
            state.outbox = channel.allocator.buffer(capacity: min(max(buffer.readableBytes, 4096), 1 << 16))
            state.channelWritable = channel.isWritable
            return (buffer, state.takeRoomWaiters(options.sendBufferHighWater))
        }
        if buffer.readableBytes > 0 {
            channel.writeAndFlush(buffer, promise: nil)
        }
        for waiter in waiters { waiter.resume() }
    }

    var inbound: InboundHandler? {
        try? channel.pipeline.syncOperations.handler(type: InboundHandler.self)
    }
}

/// State shared between the application's tasks and the event loop, under one lock.
struct SharedState {
    var outbox: ByteBuffer
    /// Set from the relay's INIT.
    var dialect = ProtocolDialect.iris
    var flushScheduled = false
    var channelWritable = true
    var roomWaiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
    var nextRoomWaiterKey: UInt64 = 0
    var failure: SkeinError?
    var closeSent = false
    var nextRequestID: UInt64 = 0
    var requests: [UInt64: CheckedContinuation<Message, any Error>] = [:]
    /// Surveys waiting for answers and their end, by id (from the requests' counter).
    var surveys: [UInt64: Survey] = [:]
    var nextTunnelID: UInt64 = 0
    var tunnels: [UInt64: Tunnel] = [:]
    var subscriptions: [String: EventFeed] = [:]

    func checkOpen() throws(SkeinError) {
        if let failure { throw failure }
        if closeSent { throw SkeinError.connectionClosed(reason: "closed by this client") }
    }

    func hasRoom(_ highWater: Int) -> Bool {
        channelWritable && outbox.readableBytes < highWater
    }

    mutating func takeRoomWaiters(_ highWater: Int) -> [CheckedContinuation<Void, any Error>] {
        guard hasRoom(highWater), !roomWaiters.isEmpty else { return [] }
        defer { roomWaiters = [:] }
        return Array(roomWaiters.values)
    }
}
