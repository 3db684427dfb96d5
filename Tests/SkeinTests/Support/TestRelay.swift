import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
@testable import Skein
import SkeinRelay
import Testing

/// A real relay on 127.0.0.1 (kernel-chosen port) inside a `ServiceGroup`, for the duration of
/// `body`; then shut down gracefully, as SIGTERM does in production.
///
/// Every connection a test opens through `connect`/`serve` is closed when the body ends, so a
/// failing test does not leave sockets behind for the next one.
extension ConnectionOptions {
    /// v1.0-draft2, as every Iris binding speaks it: for tests of the Iris behaviour (waiting
    /// for members, failures only as timeouts).
    static var iris: ConnectionOptions {
        var options = ConnectionOptions()
        options.protocolVersion = .irisDraft2
        return options
    }
}

final class TestRelay: Sendable {
    let port: Int
    let service: RelayService
    let group: ServiceGroup
    private let opened = NIOLockedValueBox<[SkeinConnection]>([])

    var endpoint: RelayEndpoint { .tcp(host: "127.0.0.1", port: port) }

    private init(port: Int, service: RelayService, group: ServiceGroup) {
        self.port = port
        self.service = service
        self.group = group
    }

    static func run<T: Sendable>(
        _ configure: (inout RelayConfiguration) -> Void = { _ in },
        _ body: (TestRelay) async throws -> T
    ) async throws -> T {
        var configuration = RelayConfiguration()
        configuration.clientHosts = ["127.0.0.1"]
        configuration.clientPort = 0
        configuration.drainTimeout = .milliseconds(100)
        configure(&configuration)
        let logger = Logger(label: "skein.test.relay") { _ in SwiftLogNoOpLogHandler() }
        let service = RelayService(configuration: configuration, logger: logger)
        let group = ServiceGroup(services: [service], logger: logger)

        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let relay: TestRelay
            do {
                relay = TestRelay(port: try await firstPort(of: service), service: service, group: group)
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
            let result: Result<T, any Error>
            do {
                result = .success(try await body(relay))
            } catch {
                result = .failure(error)
            }
            await relay.closeEverything()
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            return try result.get()
        }
    }

    /// The port from `service.listening`, or an error if the relay does not listen in time.
    private static func firstPort(of service: RelayService) async throws -> Int {
        try await withThrowingTaskGroup(of: Int?.self) { race in
            race.addTask { await service.listening.first { _ in true } }
            race.addTask {
                try await Task.sleep(for: .seconds(10))
                return nil
            }
            defer { race.cancelAll() }
            guard let port = try await race.next()!, port > 0 else {
                throw TestFailure("the relay did not start listening")
            }
            return port
        }
    }

    // MARK: - Connections

    func connect(options: ConnectionOptions = .init()) async throws -> SkeinConnection {
        track(try await Skein.connect(to: endpoint, options: options))
    }

    func serve(
        _ cluster: String, options: ConnectionOptions = .init(),
        request: @escaping @Sendable (ServiceRequest) async throws -> ByteBuffer = { $0.body },
        broadcast: @escaping @Sendable (ByteBuffer) async -> Void = { _ in },
        tunnel: @escaping @Sendable (Tunnel) async -> Void = { try? await $0.close() }
    ) async throws -> SkeinConnection {
        track(
            try await Skein.serve(
                cluster: cluster, to: endpoint, options: options, request: request, broadcast: broadcast, tunnel: tunnel))
    }

    func serve(_ cluster: String, options: ConnectionOptions = .init(), handler: some ClusterHandler) async throws
        -> SkeinConnection
    {
        track(try await Skein.serve(cluster: cluster, to: endpoint, options: options, handler: handler))
    }

    private func track(_ connection: SkeinConnection) -> SkeinConnection {
        opened.withLockedValue { $0.append(connection) }
        return connection
    }

    private func closeEverything() async {
        let connections = opened.withLockedValue { $0 }
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask { try? await connection.close() }
            }
        }
    }

    /// Ends the relay as SIGTERM would, and waits until it has stopped.
    func shutDown() async {
        await group.triggerGracefulShutdown()
    }

    var connectionCount: Int { get async { await service.server.connectionCount } }
    var pendingRequests: Int { get async { await service.server.pendingRequests } }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Waiting on conditions

/// Runs `operation`, failing with a clear message if it does not finish within `timeout`, so a
/// hang becomes a test failure instead of a stuck run. The operation is cancelled then, but not
/// waited for (a hung binding call may not respond to cancellation).
func within<T: Sendable>(
    _ timeout: Duration, _ what: String, _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    let waiter = Shared<CheckedContinuation<T, any Error>?>(nil)
    @Sendable func take() -> CheckedContinuation<T, any Error>? { waiter.update { state in defer { state = nil }; return state } }
    return try await withCheckedThrowingContinuation { continuation in
        waiter.update { $0 = continuation }
        let work = Task {
            let result: Result<T, any Error>
            do { result = .success(try await operation()) } catch { result = .failure(error) }
            take()?.resume(with: result)
        }
        Task {
            let timer = Task { try await Task.sleep(for: timeout) }
            // Whichever comes first: the work ends (the timer is cut short) or the time is up.
            async let _ = { _ = await work.result; timer.cancel() }()
            if (try? await timer.value) != nil, let continuation = take() {
                work.cancel()
                continuation.resume(throwing: TestFailure("\(what) did not finish within \(timeout)"))
            }
        }
    }
}

/// Runs `operation` and returns the error it throws (nil if it returned).
func error<T>(from operation: () async throws -> T) async -> (any Error)? {
    do {
        _ = try await operation()
        return nil
    } catch {
        return error
    }
}

extension SkeinConnection {
    /// Tunnels this binding is building or has open (internal state, for ordering tests).
    var tunnelsInProgress: Int { shared.withLockedValue { $0.tunnels.count } }

    /// Drops the socket without a CLOSE frame, as a crashed process would.
    func abort() { channel.close(promise: nil) }

    /// Whether the binding reads from the relay (false while a full feed holds it back).
    var isReading: Bool { get async { (try? await channel.getOption(.autoRead).get()) ?? false } }

    /// Returns once the relay has processed every frame this connection sent before, and this
    /// binding has read every frame the relay sent it before: a request with timeout 0 is
    /// answered by the relay at once, in order with everything else.
    func barrier(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        do {
            _ = try await request(cluster: "skein.test.barrier", ByteBuffer(), timeout: .zero)
            Issue.record("a request with timeout 0 was answered", sourceLocation: sourceLocation)
        } catch SkeinError.Code.timedOut {
        }
    }
}

// MARK: - Small thread-safe tools

/// A value shared between tasks and handlers.
final class Shared<Value: Sendable>: Sendable {
    private let box: NIOLockedValueBox<Value>
    init(_ value: Value) { box = NIOLockedValueBox(value) }
    var value: Value { box.withLockedValue { $0 } }
    @discardableResult
    func update<R: Sendable>(_ body: (inout Value) -> R) -> R { box.withLockedValue(body) }
}

/// A one-shot signal a task can wait for.
final class Gate: Sendable {
    private let state = NIOLockedValueBox<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func open() {
        let waiters = state.withLockedValue { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    var isOpen: Bool { state.withLockedValue { $0.open } }

    func wait() async {
        await withCheckedContinuation { continuation in
            let open = state.withLockedValue { state in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if open { continuation.resume() }
        }
    }
}

extension ByteBuffer {
    var text: String { String(buffer: self) }
}
