import DequeModule
import NIOConcurrencyHelpers
import NIOCore
internal import SkeinWire

/// An ordered, flow-controlled, bidirectional message stream to one member of a cluster.
///
/// `send` splits a message into chunks and waits for the relay's allowance, so a fast sender
/// never outruns the receiver by more than the windows. `receive` returns whole messages in
/// order and returns allowance as the application consumes them (and, for a message larger
/// than the window, as its chunks arrive). Tasks may send and receive concurrently: sends on one
/// tunnel are serialized, receivers are served in turn. Waiting sends and receives are
/// cancellable; a send cancelled mid-message leaves a partial message the receiver discards.
public final class Tunnel: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer
    public typealias Failure = any Error

    let id: UInt64
    let connection: SkeinConnection
    private let state = NIOLockedValueBox(State())
    private let sendLock = AsyncLock()

    struct State {
        enum Phase { case building, open, closing, closed }
        var phase = Phase.building
        var buildWaiter: CheckedContinuation<Void, any Error>?
        var chunkLimit: UInt64 = 0
        var allowance: UInt64 = 0
        var allowanceWaiter: (needed: UInt64, continuation: CheckedContinuation<Void, any Error>)?
        var partial: ByteBuffer?
        var partialExpected = 0
        /// Wire bytes of `partial` not yet granted back to the relay.
        var partialBytes: UInt64 = 0
        /// The caller of `tunnel(cluster:)` was cancelled while the tunnel was being built: if
        /// the build succeeds after all, the tunnel is closed at once.
        var abandoned = false
        var messages: Deque<(message: ByteBuffer, wireBytes: UInt64)> = []
        /// Tasks waiting in `receive()`, served in order; the key lets a cancelled one leave.
        var receiveWaiters: Deque<(key: UInt64, continuation: CheckedContinuation<ByteBuffer?, any Error>)> = []
        var nextReceiveKey: UInt64 = 0
        var closeWaiter: CheckedContinuation<Void, Never>?
        /// The other side closed gracefully: buffered messages, then end of stream.
        var remoteClosed = false
        /// The tunnel failed (or the connection ended): buffered messages, then this error.
        var failure: SkeinError?

        var sendError: SkeinError? {
            if let failure { return failure }
            // Checked before the phase: a graceful close by the other side also moves the phase
            // to `.closed`, and must read as the other side's close, not as ours.
            if remoteClosed { return .tunnelClosed(reason: "") }
            switch phase {
            case .open, .building: return nil
            case .closing, .closed: return .tunnelClosed(reason: "closed by this side")
            }
        }

        /// Allowance to return for the message being assembled. A message larger than the
        /// window could never complete if its chunks were only granted back on consumption, so
        /// they are granted back at once while nothing complete waits for the application.
        /// Memory stays bounded: at most one such message (≤ maxTunnelMessageSize) beyond the window.
        mutating func takePartialGrant() -> UInt64 {
            guard partial != nil, messages.isEmpty, phase == .open else { return 0 }
            defer { partialBytes = 0 }
            return partialBytes
        }
    }

    init(id: UInt64, connection: SkeinConnection) {
        self.id = id
        self.connection = connection
    }

    // MARK: - Application side

    /// Sends one message, of any size: it travels as chunks of at most the relay's chunk limit,
    /// each sent once the relay allows it, so neither this process nor the relay ever holds
    /// more of it than the windows. (`maxMessageSize` bounds requests, replies and events, not
    /// tunnel messages, as in every Iris binding.)
    public func send(_ message: ByteBuffer) async throws {
        try await sendLock.withLock {
            var remaining = message
            let total = UInt64(message.readableBytes)
            var first = true
            repeat {
                let chunkLimit = state.withLockedValue { Swift.max(1, $0.chunkLimit) }
                let size = Swift.min(Int(chunkLimit), remaining.readableBytes)
                try await reserveAllowance(UInt64(size))
                let chunk = remaining.readSlice(length: size)!
                try await connection.send(.tunnelTransfer(tunnelID: id, sizeOrContinuation: first ? total : 0, chunk: chunk))
                first = false
            } while remaining.readableBytes > 0
        }
    }

    /// Sends one message, giving up with `SkeinError.timedOut` if it is not all handed to the
    /// relay within `timeout` (the Iris bindings' `Send(message, timeout)`). A message given up
    /// part way leaves the tunnel usable: the next message starts with a first chunk, and the
    /// receiver discards the unfinished one, as the protocol says.
    public func send(_ message: ByteBuffer, timeout: Duration) async throws {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await self.send(message)
                return true
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return false
            }
            defer { group.cancelAll() }
            guard try await group.next()! else { throw SkeinError.timedOut }
        }
    }

    public func send(_ message: String) async throws {
        try await send(ByteBuffer(string: message))
    }

    public func send(_ message: String, timeout: Duration) async throws {
        try await send(ByteBuffer(string: message), timeout: timeout)
    }

    /// The next whole message; nil once the tunnel is closed gracefully (by either side).
    /// Several tasks may wait at once; each message goes to one of them, in the order they came.
    /// Cancelling a waiting task makes its `receive` throw `CancellationError`; no message is lost.
    public func receive() async throws -> ByteBuffer? {
        let key = state.withLockedValue { state in
            defer { state.nextReceiveKey += 1 }
            return state.nextReceiveKey
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ByteBuffer?, any Error>) in
                let (result, grant) = state.withLockedValue { state -> (Result<ByteBuffer?, any Error>?, UInt64) in
                    if state.receiveWaiters.isEmpty, let next = state.messages.popFirst() {
                        let grant = state.phase == .open && !state.remoteClosed ? next.wireBytes + state.takePartialGrant() : 0
                        return (.success(next.message), grant)
                    }
                    if let failure = state.failure { return (.failure(failure), 0) }
                    if state.remoteClosed || state.phase == .closed || state.phase == .closing { return (.success(nil), 0) }
                    if Task.isCancelled { return (.failure(CancellationError()), 0) }
                    state.receiveWaiters.append((key, continuation))
                    return (nil, 0)
                }
                if grant > 0 { connection.sendNow(.tunnelAllow(tunnelID: id, bytes: grant)) }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            let waiter = state.withLockedValue { state -> CheckedContinuation<ByteBuffer?, any Error>? in
                guard let index = state.receiveWaiters.firstIndex(where: { $0.key == key }) else { return nil }
                return state.receiveWaiters.remove(at: index).continuation
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Closes the tunnel gracefully and waits for the relay's acknowledgement.
    public func close() async throws {
        let send = state.withLockedValue { state -> Bool in
            guard state.phase == .open, state.failure == nil, !state.remoteClosed else { return false }
            state.phase = .closing
            return true
        }
        guard send else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLockedValue { state -> Bool in
                if state.phase == .closed { return true }
                state.closeWaiter = continuation
                return false
            }
            if done {
                continuation.resume()
            } else {
                connection.sendNow(.tunnelClose(tunnelID: id))
            }
        }
    }

    public func makeAsyncIterator() -> Iterator { Iterator(tunnel: self) }

    public struct Iterator: AsyncIteratorProtocol {
        let tunnel: Tunnel
        public mutating func next() async throws -> ByteBuffer? { try await tunnel.receive() }
    }

    /// Waits until the relay allows `bytes` more. Cancellable: a sender stuck behind a receiver
    /// that does not read can give up (the receiver discards the unfinished message when the
    /// next one starts, as the protocol says).
    private func reserveAllowance(_ bytes: UInt64) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let result = state.withLockedValue { state -> Result<Void, any Error>? in
                    if let error = state.sendError { return .failure(error) }
                    if state.allowance >= bytes {
                        state.allowance -= bytes
                        return .success(())
                    }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.allowanceWaiter = (bytes, continuation)
                    return nil
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            let waiter = state.withLockedValue { state in
                defer { state.allowanceWaiter = nil }
                return state.allowanceWaiter?.continuation
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    func waitUntilBuilt() async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let result = state.withLockedValue { state -> Result<Void, any Error>? in
                    if let failure = state.failure { return .failure(failure) }
                    if state.phase != .building { return .success(()) }
                    if Task.isCancelled {
                        state.abandoned = true
                        return .failure(CancellationError())
                    }
                    state.buildWaiter = continuation
                    return nil
                }
                if let result { continuation.resume(with: result) }
            }
        } onCancel: {
            let waiter = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
                guard state.phase == .building else { return nil }
                state.abandoned = true
                defer { state.buildWaiter = nil }
                return state.buildWaiter
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    // MARK: - Relay side (event loop)

    func built(chunkLimit: UInt64) {
        let (waiter, abandoned) = state.withLockedValue { state -> (CheckedContinuation<Void, any Error>?, Bool) in
            state.chunkLimit = chunkLimit
            if state.abandoned {
                state.phase = .closing
                return (nil, true)
            }
            state.phase = .open
            defer { state.buildWaiter = nil }
            return (state.buildWaiter, false)
        }
        if abandoned {
            // Nobody will ever use it: close it so the relay and the member let go of it.
            connection.sendNow(.tunnelClose(tunnelID: id))
        }
        waiter?.resume()
    }

    func allowed(_ bytes: UInt64) {
        let waiter = state.withLockedValue { state -> CheckedContinuation<Void, any Error>? in
            let (sum, overflow) = state.allowance.addingReportingOverflow(bytes)
            state.allowance = overflow ? .max : sum
            guard let waiter = state.allowanceWaiter, state.allowance >= waiter.needed else { return nil }
            state.allowance -= waiter.needed
            state.allowanceWaiter = nil
            return waiter.continuation
        }
        waiter?.resume()
    }

    /// What a chunk did that the tunnel cannot take.
    enum ChunkProblem: Equatable {
        /// The relay broke the chunking rules: the connection ends.
        case violation(String)
        /// A message larger than this binding holds (`ConnectionOptions.maxTunnelMessageSize`):
        /// only this tunnel ends.
        case tooLarge(size: UInt64, limit: Int)
    }

    /// A chunk arrived.
    func received(sizeOrContinuation: UInt64, chunk: ByteBuffer, limit maxMessageSize: Int) -> ChunkProblem? {
        var violation: ChunkProblem?
        var grant: UInt64 = 0
        let delivery = state.withLockedValue { state -> (CheckedContinuation<ByteBuffer?, any Error>, ByteBuffer)? in
            guard state.phase == .open || state.phase == .closing else { return nil }
            let wire = UInt64(chunk.readableBytes)
            var chunk = chunk
            if state.partial == nil || sizeOrContinuation != 0 {
                // A first chunk (a new first chunk discards an incomplete message, whose
                // allowance goes back to the relay: it will never be consumed).
                if state.partial != nil {
                    grant += state.partialBytes
                    state.partial = nil
                    state.partialBytes = 0
                }
                guard sizeOrContinuation <= UInt64(maxMessageSize) else {
                    violation = .tooLarge(size: sizeOrContinuation, limit: maxMessageSize)
                    return nil
                }
                guard UInt64(chunk.readableBytes) <= sizeOrContinuation || (sizeOrContinuation == 0 && chunk.readableBytes == 0) else {
                    violation = .violation("tunnel chunk of \(chunk.readableBytes) bytes for a message of \(sizeOrContinuation)")
                    return nil
                }
                if UInt64(chunk.readableBytes) == sizeOrContinuation {
                    state.partial = nil
                    state.messages.append((chunk, wire))
                } else {
                    // Grown as chunks come rather than reserved whole: a first chunk's size is
                    // only a claim until the rest arrives.
                    var partial = ByteBufferAllocator().buffer(capacity: Int(Swift.min(sizeOrContinuation, 16 << 20)))
                    partial.writeBuffer(&chunk)
                    state.partial = partial
                    state.partialExpected = Int(sizeOrContinuation)
                    state.partialBytes = wire
                }
            } else {
                guard state.partial!.readableBytes + chunk.readableBytes <= state.partialExpected else {
                    violation = .violation("tunnel chunks overrun their message's size")
                    return nil
                }
                state.partial!.writeBuffer(&chunk)
                state.partialBytes += wire
                if state.partial!.readableBytes == state.partialExpected {
                    state.messages.append((state.partial!, state.partialBytes))
                    state.partial = nil
                }
            }
            var delivery: (CheckedContinuation<ByteBuffer?, any Error>, ByteBuffer)?
            if !state.messages.isEmpty, let waiter = state.receiveWaiters.popFirst()?.continuation {
                let next = state.messages.removeFirst()
                grant += next.wireBytes
                delivery = (waiter, next.message)
            }
            grant += state.takePartialGrant()
            return delivery
        }
        if grant > 0, violation == nil {
            connection.sendNow(.tunnelAllow(tunnelID: id, bytes: grant))
        }
        if let (waiter, message) = delivery {
            waiter.resume(returning: message)
        }
        return violation
    }

    /// The relay closed the tunnel: the acknowledgement of our close, or the other side's close.
    func closedByRelay(reason: String) {
        finish(reason.isEmpty ? nil : .tunnelClosed(reason: reason))
    }

    /// The build timed out, or the tunnel failed, or the connection ended.
    func fail(_ error: SkeinError) {
        finish(error)
    }

    private func finish(_ error: SkeinError?) {
        let waiters = state.withLockedValue { state -> Waiters in
            var waiters = Waiters()
            switch state.phase {
            case .closing:
                state.phase = .closed
            case .closed:
                return waiters
            case .building, .open:
                if let error { state.failure = error } else { state.remoteClosed = true }
                if state.phase == .building {
                    state.failure = error ?? .tunnelClosed(reason: "")
                }
                state.phase = .closed
            }
            waiters.build = state.buildWaiter
            waiters.allowance = state.allowanceWaiter?.continuation
            waiters.close = state.closeWaiter
            state.buildWaiter = nil
            state.allowanceWaiter = nil
            state.closeWaiter = nil
            // Waiters exist only while no message is buffered: they all get the end.
            waiters.receive = state.receiveWaiters.map(\.continuation)
            state.receiveWaiters = []
            waiters.receiveResult = state.failure.map { .failure($0) } ?? .success(nil)
            waiters.error = state.failure ?? .tunnelClosed(reason: "")
            return waiters
        }
        connection.forgetTunnel(id)
        waiters.build?.resume(throwing: waiters.error)
        waiters.allowance?.resume(throwing: waiters.error)
        waiters.close?.resume()
        for waiter in waiters.receive { waiter.resume(with: waiters.receiveResult) }
    }

    private struct Waiters {
        var build: CheckedContinuation<Void, any Error>?
        var allowance: CheckedContinuation<Void, any Error>?
        var close: CheckedContinuation<Void, Never>?
        var receive: [CheckedContinuation<ByteBuffer?, any Error>] = []
        var receiveResult: Result<ByteBuffer?, any Error> = .success(nil)
        var error: SkeinError = .tunnelClosed(reason: "")
    }
}

/// A minimal FIFO async mutex, so concurrent sends do not interleave their chunks.
final class AsyncLock: Sendable {
    private let state = NIOLockedValueBox<(locked: Bool, waiters: Deque<CheckedContinuation<Void, Never>>)>((false, []))

    func withLock<T>(_ body: () async throws -> T) async throws -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let acquired = state.withLockedValue { state -> Bool in
                if !state.locked {
                    state.locked = true
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if acquired { continuation.resume() }
        }
        defer {
            let next = state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
                if let next = state.waiters.popFirst() { return next }
                state.locked = false
                return nil
            }
            next?.resume()
        }
        return try await body()
    }
}
