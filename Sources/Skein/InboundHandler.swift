import DequeModule
import NIOCore
internal import ServiceContextModule
internal import SkeinWire

/// Decodes the relay's frames and dispatches them: replies to waiting callers, events to
/// subscriptions, requests and broadcasts to the member's handler, chunks to tunnels.
/// Lives on the connection's event loop.
final class InboundHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let connection: SkeinConnection
    private let handler: (any ClusterHandler)?
    @exclusivity(unchecked) private var handshake: EventLoopPromise<SkeinConnection>?
    @exclusivity(unchecked) private var handshakeDone = false
    @exclusivity(unchecked) private var cumulation: ByteBuffer?
    private let limits: WireLimits
    @exclusivity(unchecked) private var closeReason: String?
    @exclusivity(unchecked) private var failed: SkeinError?

    // Member side: bounded handler concurrency and a bounded queue behind it.
    @exclusivity(unchecked) private var runningHandlers = 0
    /// Requests waiting for a free handler, with the deadline they arrived with: time spent
    /// here counts against it.
    @exclusivity(unchecked) private var queuedRequests: Deque<(id: UInt64, request: ServiceRequest)> = []
    @exclusivity(unchecked) private var broadcastFeed: EventFeed?
    @exclusivity(unchecked) private var pausedFeeds: Set<ObjectIdentifier> = []
    /// Where handlers run: nil for the global executor, or this connection's event loop.
    private var handlerExecutor: (any TaskExecutor)? {
        connection.options.handlerExecution == .eventLoop ? connection.executor : nil
    }
    @exclusivity(unchecked) private var batchFeed: EventFeed?
    @exclusivity(unchecked) private var batch: [Subscription.Event] = []
    @exclusivity(unchecked) private var reading = true
    /// This side sent CLOSE: read everything from now on, full feeds or not, so the relay's
    /// answer and end of stream get through (a paused connection would never see them).
    @exclusivity(unchecked) private var closing = false
    @exclusivity(unchecked) private var channel: (any Channel)?
    private let relay: RelayEndpoint
    @exclusivity(unchecked) private var handshakeTimer: Scheduled<Void>?

    init(
        connection: SkeinConnection, handler: (any ClusterHandler)?, handshake: EventLoopPromise<SkeinConnection>,
        relay: RelayEndpoint
    ) {
        self.connection = connection
        self.handler = handler
        self.handshake = handshake
        self.relay = relay
        self.limits = WireLimits(maxMessageSize: connection.options.maxMessageSize)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        channel = context.channel
    }

    func channelActive(context: ChannelHandlerContext) {
        // Started here, on the loop that completes the handshake, so the timer and the relay's
        // answer cannot race: whichever runs first wins, and the timer never closes a
        // connection whose handshake succeeded.
        let timeout = connection.options.handshakeTimeout
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout.timeAmount) { [self] in
            guard let handshake, !handshakeDone, failed == nil else { return }
            let error = SkeinError.cannotConnect("\(relay): no answer to INIT within \(timeout)")
            failed = error
            handshake.fail(error)
            self.handshake = nil
            loopBound.value.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard failed == nil else { return }
        var incoming = unwrapInboundIn(data)
        if cumulation == nil || cumulation!.readableBytes == 0 {
            cumulation = incoming
        } else {
            cumulation!.writeBuffer(&incoming)
        }
        do {
            while failed == nil, let frame = try RelayFrame.decode(from: &cumulation!, limits: limits) {
                handle(frame, context: context)
            }
        } catch {
            violation("\(error)", context: context)
        }
        flushBatch()
        if cumulation?.readableBytes == 0 {
            cumulation = nil
        } else if let index = cumulation?.readerIndex, index > 1 << 16 {
            cumulation!.discardReadBytes()
        }
    }

    private func handle(_ frame: RelayFrame, context: ChannelHandlerContext) {
        guard handshakeDone else {
            switch frame {
            case .initialize(let magic, let version):
                guard magic == RelayProtocol.relayMagic else {
                    return violation("relay sent magic \(magic.debugDescription)", context: context)
                }
                guard let dialect = ProtocolDialect(version: version) else {
                    return violation("relay answered INIT with version \(version.debugDescription)", context: context)
                }
                handshakeDone = true
                handshakeTimer?.cancel()
                connection.shared.withLockedValue { $0.dialect = dialect }
                if let handler {
                    startBroadcastConsumer(handler)
                }
                handshake?.succeed(connection)
                handshake = nil
            case .deny(_, let reason):
                failed = .denied(reason)
                handshakeTimer?.cancel()
                handshake?.fail(SkeinError.denied(reason))
                handshake = nil
                context.close(promise: nil)
            default:
                violation("relay sent \(frame.opcode) before INIT", context: context)
            }
            return
        }
        switch frame {
        case .initialize, .deny:
            violation("relay sent \(frame.opcode) after the handshake", context: context)
        case .requestFailed, .tunnelFailed, .refused:
            guard connection.dialect.hasFailureFrames else {
                return violation("relay sent \(frame.opcode), a skein/1 frame, on a v1.0-draft2 connection", context: context)
            }
            handleFailure(frame)
        case .close(let reason):
            closeReason = reason
        case .reply(let id, let outcome):
            answered(id, outcome, headers: Headers())
        case .hreply(let id, let headers, let outcome):
            guard connection.dialect >= .skein2 else { return skein2Only(frame, context: context) }
            answered(id, outcome, headers: Headers(headers))
        case .hbroadcast(let headers, let message):
            guard connection.dialect >= .skein2 else { return skein2Only(frame, context: context) }
            if let broadcastFeed { deliver(Subscription.Event(topic: "", body: message, headers: Headers(headers)), to: broadcastFeed) }
        case .hrequest(let id, let headers, let body, let timeout):
            guard connection.dialect >= .skein2 else { return skein2Only(frame, context: context) }
            received(request: id, body: body, headers: Headers(headers), timeoutMillis: timeout)
        case .publish(let topic, let event):
            if let feed = connection.shared.withLockedValue({ $0.subscriptions[topic] }) {
                deliver(Subscription.Event(topic: topic, body: event), to: feed)
            }
        case .event(let subscription, let topic, let headers, let event):
            guard connection.dialect >= .skein2 else { return skein2Only(frame, context: context) }
            if let feed = connection.shared.withLockedValue({ $0.subscriptions[subscription] }) {
                deliver(Subscription.Event(topic: topic, body: event, headers: Headers(headers)), to: feed)
            }
        case .broadcast(let message):
            if let broadcastFeed { deliver(Subscription.Event(topic: "", body: message), to: broadcastFeed) }
        case .request(let id, let body, let timeout):
            received(request: id, body: body, headers: Headers(), timeoutMillis: timeout)
        case .surveyAnswer(let id, let headers, let outcome):
            guard connection.dialect >= .skein2 else { return skein2Only(frame, context: context) }
            guard let survey = connection.shared.withLockedValue({ $0.surveys[id] }) else { return }
            switch outcome {
            case .success(let body): survey.continuation.yield(.reply(Message(body, headers: Headers(headers))))
            case .fault(let fault): survey.continuation.yield(.fault(fault))
            }
        case .surveyEnd(let id, let tally):
            guard connection.dialect >= .skein2 else { return skein2Only(frame, context: context) }
            connection.shared.withLockedValue({ $0.surveys.removeValue(forKey: id) })?.finish(
                Survey.Tally(
                    asked: Int(clamping: tally.asked), answered: Int(clamping: tally.answered), faulted: Int(clamping: tally.faulted),
                    lost: Int(clamping: tally.lost)))
        case .tunnelInit(let buildID, let chunkLimit):
            // A plain client never confirms; the relay times the build out.
            guard let handler, let tunnel = connection.acceptTunnel(buildID: buildID, chunkLimit: chunkLimit) else { return }
            Task(executorPreference: handlerExecutor) {
                await handler.handleTunnel(tunnel)
                try? await tunnel.close()
            }
        case .tunnelConfirm(let id, let outcome):
            guard let tunnel = connection.shared.withLockedValue({ $0.tunnels[id] }) else { return }
            switch outcome {
            case .built(let chunkLimit):
                connection.sendNow(.tunnelAllow(tunnelID: id, bytes: connection.options.tunnelWindow))
                tunnel.built(chunkLimit: chunkLimit)
            case .timedOut:
                tunnel.fail(.timedOut)
            }
        case .tunnelAllow(let id, let bytes):
            connection.shared.withLockedValue({ $0.tunnels[id] })?.allowed(bytes)
        case .tunnelTransfer(let id, let size, let chunk):
            guard let tunnel = connection.shared.withLockedValue({ $0.tunnels[id] }) else { return }
            switch tunnel.received(sizeOrContinuation: size, chunk: chunk, limit: connection.options.maxTunnelMessageSize) {
            case nil:
                break
            case .violation(let problem):
                violation(problem, context: context)
            case .tooLarge(let size, let limit):
                // Only this tunnel ends: the relay is told, and its later chunks find no tunnel.
                tunnel.fail(.messageTooLarge(size: Int(clamping: size), limit: limit))
                connection.sendNow(.tunnelClose(tunnelID: id))
            }
        case .tunnelClose(let id, let reason):
            connection.shared.withLockedValue({ $0.tunnels[id] })?.closedByRelay(reason: reason)
        }
    }

    private func skein2Only(_ frame: RelayFrame, context: ChannelHandlerContext) {
        violation("relay sent \(frame.opcode), a skein/2 frame, on a \(connection.dialect.version) connection", context: context)
    }

    private func answered(_ id: UInt64, _ outcome: RequestOutcome, headers: Headers) {
        let waiter = connection.shared.withLockedValue { $0.requests.removeValue(forKey: id) }
        switch outcome {
        case .success(let body): waiter?.resume(returning: Message(body, headers: headers))
        case .fault(let fault): waiter?.resume(throwing: SkeinError.remoteFault(fault))
        case .timedOut: waiter?.resume(throwing: SkeinError.timedOut)
        }
    }

    private func received(request id: UInt64, body: ByteBuffer, headers: Headers, timeoutMillis timeout: UInt64) {
        guard handler != nil else {
            connection.sendNow(.reply(id: id, outcome: .fault("this connection is not a member of any cluster")))
            return
        }
        let deadline = ContinuousClock.now + .milliseconds(Int64(clamping: timeout))
        let request = ServiceRequest(body: body, timeout: .milliseconds(Int64(clamping: timeout)), deadline: deadline, headers: headers)
        if runningHandlers < connection.options.maxConcurrentHandlers {
            startRequest(id: id, request)
        } else {
            queuedRequests.append((id, request))
            updateReading()
        }
    }

    /// The `skein/1` failure frames.
    private func handleFailure(_ frame: RelayFrame) {
        switch frame {
        case .requestFailed(let id, let reason, let detail):
            let (waiter, survey) = connection.shared.withLockedValue {
                ($0.requests.removeValue(forKey: id), $0.surveys.removeValue(forKey: id))
            }
            waiter?.resume(throwing: SkeinError(reason, detail: detail))
            survey?.continuation.finish(throwing: SkeinError(reason, detail: detail))
        case .tunnelFailed(let id, let reason, let detail):
            connection.shared.withLockedValue({ $0.tunnels[id] })?.fail(SkeinError(reason, detail: detail))
        case .refused(let op, let name, let reason, let detail):
            refused(op: op, name: name, error: SkeinError(reason, detail: detail))
        default:
            break
        }
    }

    /// The relay did not carry out a broadcast, publish or subscribe (`skein/1`). A refused
    /// subscription was never registered: its sequence ends with the error.
    private func refused(op: UInt8, name: String, error: SkeinError) {
        let operation: Refusal.Operation
        switch Opcode(rawValue: op) {
        case .subscribe?:
            let feed = connection.shared.withLockedValue { state -> EventFeed? in
                defer { state.subscriptions[name] = nil }
                return state.subscriptions[name]
            }
            if let feed {
                if batchFeed === feed { flushBatch() }
                feed.source.finish(error)
            }
            operation = .subscribe
        case .publish?: operation = .publish
        case .broadcast?: operation = .broadcast
        default: operation = .other(op)
        }
        connection.options.onRefused?(Refusal(operation: operation, name: name, error: error))
    }

    // MARK: - Inbound queues and backpressure

    /// Events are handed to their feed in batches (consecutive events of one feed within one
    /// read): one lock and at most one consumer wake-up per batch instead of per event.
    private func deliver(_ event: Subscription.Event, to feed: EventFeed) {
        if let batchFeed, batchFeed !== feed { flushBatch() }
        batchFeed = feed
        batch.append(event)
    }

    private func flushBatch() {
        guard let feed = batchFeed else { return }
        batchFeed = nil
        let events = batch
        batch.removeAll(keepingCapacity: true)
        if feed.source.yield(contentsOf: events) == .stopProducing, !feed.isPaused {
            feed.isPaused = true
            pausedFeeds.insert(ObjectIdentifier(feed))
            updateReading()
        }
    }

    /// The consumer of `feed` caught up (or went away): read again if nothing else is full.
    func feedResumed(_ feed: EventFeed?) {
        guard let feed, feed.isPaused else { return }
        feed.isPaused = false
        pausedFeeds.remove(ObjectIdentifier(feed))
        updateReading()
    }

    /// The application called `close()`.
    func closeRequested() {
        closing = true
        updateReading()
    }

    private func updateReading() {
        let want = closing || (pausedFeeds.isEmpty && queuedRequests.count < connection.options.maxConcurrentHandlers)
        guard want != reading, let channel else { return }
        reading = want
        try? channel.syncOptions?.setOption(.autoRead, value: want)
        if want { channel.read() }
    }

    private func startBroadcastConsumer(_ handler: any ClusterHandler) {
        let box = ObjectIdentifierBox()
        let (feed, sequence) = EventFeed.make(
            buffer: connection.options.receiveBuffer,
            delegate: FeedDelegate(kind: .broadcasts, connection: connection, feedID: box))
        box.feed = feed
        broadcastFeed = feed
        Task(executorPreference: handlerExecutor) {
            do {
                for try await message in sequence {
                    if message.headers.isEmpty {
                        await handler.handleBroadcast(message.body, headers: message.headers)
                    } else {
                        await ServiceContext.withValue(message.headers.serviceContext) {
                            await handler.handleBroadcast(message.body, headers: message.headers)
                        }
                    }
                }
            } catch {}
        }
    }

    private func startRequest(id: UInt64, _ queued: ServiceRequest) {
        guard let handler else { return }
        runningHandlers += 1
        // Time spent queued here counts against the deadline.
        var request = queued
        request.timeout = max(.zero, request.deadline - .now)
        let limit = connection.options.maxMessageSize
        let connection = self.connection
        let loop = connection.channel.eventLoop
        let bound = NIOLoopBound(self, eventLoop: loop)
        Task(executorPreference: handlerExecutor) { [request] in
            let outcome: ReplyOutcome
            var headers = Headers()
            do {
                let reply: Message
                if request.headers.isEmpty {
                    reply = try await handler.respond(to: request)
                } else {
                    // The caller's trace context is the handler's, and goes back with the reply.
                    let context = request.headers.serviceContext
                    reply = try await ServiceContext.withValue(context) {
                        var reply = try await handler.respond(to: request)
                        reply.headers = reply.headers.withTraceContext()
                        return reply
                    }
                }
                // Too big for the wire, or headers it cannot carry: the relay would end this whole
                // connection over them. The caller hears why, as a fault.
                if reply.body.readableBytes > limit {
                    outcome = .fault("\(SkeinError.messageTooLarge(size: reply.body.readableBytes, limit: limit))")
                } else if let problem = connection.problem(with: reply.headers) {
                    outcome = .fault("reply headers: \(problem)")
                } else {
                    outcome = .success(reply.body)
                    headers = reply.headers
                }
            } catch let fault as SkeinFault {
                outcome = .fault(fault.message)
            } catch {
                outcome = .fault(String(describing: error))
            }
            if headers.isEmpty || connection.dialect < .skein2 {
                connection.sendNow(.reply(id: id, outcome: outcome))
            } else {
                connection.sendNow(.hreply(id: id, headers: headers.entries, outcome: outcome))
            }
            loop.execute { bound.value.requestFinished() }
        }
    }

    private func requestFinished() {
        runningHandlers -= 1
        if let next = queuedRequests.popFirst() {
            startRequest(id: next.id, next.request)
        }
        updateReading()
    }

    // MARK: - Failure and end

    private func violation(_ what: String, context: ChannelHandlerContext) {
        guard failed == nil else { return }
        failed = .protocolViolation(what)
        handshakeTimer?.cancel()
        handshake?.fail(SkeinError.protocolViolation(what))
        handshake = nil
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        let highWater = connection.options.sendBufferHighWater
        let waiters = connection.shared.withLockedValue { state in
            state.channelWritable = writable
            return state.takeRoomWaiters(highWater)
        }
        for waiter in waiters { waiter.resume() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error: SkeinError = failed ?? .connectionClosed(reason: closeReason ?? "connection to the relay lost")
        let graceful = failed == nil && closeReason == ""
        handshakeTimer?.cancel()
        handshake?.fail(error)
        handshake = nil
        let (requests, surveys, tunnels, feeds, waiters) = connection.shared.withLockedValue { state in
            if state.failure == nil { state.failure = error }
            defer {
                state.requests = [:]
                state.surveys = [:]
                state.tunnels = [:]
                state.subscriptions = [:]
                state.roomWaiters = [:]
            }
            return (state.requests, state.surveys, state.tunnels, state.subscriptions, Array(state.roomWaiters.values))
        }
        for (_, waiter) in requests { waiter.resume(throwing: error) }
        for (_, survey) in surveys { survey.continuation.finish(throwing: error) }
        for (_, tunnel) in tunnels { tunnel.fail(error) }
        for feed in feeds.values + (broadcastFeed.map { [$0] } ?? []) {
            if graceful { feed.source.finish() } else { feed.source.finish(error) }
        }
        for waiter in waiters { waiter.resume(throwing: error) }
        // Nobody can receive their answers any more.
        queuedRequests.removeAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if failed == nil, closeReason == nil {
            closeReason = "connection to the relay lost: \(error)"
        }
        context.close(promise: nil)
    }
}
