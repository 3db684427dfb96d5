import NIOCore
// Every payload in the API is a ByteBuffer: users need not depend on swift-nio to name it.
@_exported import struct NIOCore.ByteBuffer
internal import NIOPosix
internal import SkeinWire

/// Entry point of the Skein client binding.
///
/// ```swift
/// let skein = try await Skein.connect()
/// let reply = try await skein.request(cluster: "echo", "hello", timeout: .seconds(1))
/// ```
///
/// The binding speaks Skein's `skein/1` extension to a Skein relay (distinct early failures:
/// Docs/skein-1.md) and falls back to the Iris relay protocol `v1.0-draft2` on its own, so it
/// works against an Iris node too.
public enum Skein {
    /// Connects as a plain client: it can call clusters, publish, subscribe and open tunnels,
    /// but serves nothing.
    public static func connect(
        to relay: RelayEndpoint = .default, options: ConnectionOptions = .init()
    ) async throws -> SkeinConnection {
        try await SkeinConnection.open(relay: relay, cluster: "", handler: nil, options: options)
    }

    /// Connects as a member of `cluster`: the relay balances the cluster's requests and tunnels
    /// onto this connection and delivers the cluster's broadcasts to it. Handlers run on
    /// their own tasks, at most `options.maxConcurrentHandlers` requests at a time.
    public static func serve(
        cluster: String, to relay: RelayEndpoint = .default, options: ConnectionOptions = .init(),
        handler: some ClusterHandler
    ) async throws -> SkeinConnection {
        guard !cluster.isEmpty else { throw SkeinError.invalidName("a member needs a non-empty cluster name") }
        return try await SkeinConnection.open(relay: relay, cluster: cluster, handler: handler, options: options)
    }

    /// Connects as a member of `cluster` with closures for handlers.
    public static func serve(
        cluster: String, to relay: RelayEndpoint = .default, options: ConnectionOptions = .init(),
        request: @escaping @Sendable (ServiceRequest) async throws -> ByteBuffer,
        broadcast: @escaping @Sendable (ByteBuffer) async -> Void = { _ in },
        tunnel: @escaping @Sendable (Tunnel) async -> Void = { try? await $0.close() }
    ) async throws -> SkeinConnection {
        try await serve(
            cluster: cluster, to: relay, options: options,
            handler: ClosureClusterHandler(onRequest: request, onBroadcast: broadcast, onTunnel: tunnel))
    }
}

/// Where the local relay listens.
public enum RelayEndpoint: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unixSocket(path: String)

    /// `127.0.0.1:55555`, the relay's default.
    public static let `default` = RelayEndpoint.tcp(host: "127.0.0.1", port: 55555)

    /// Parses `HOST:PORT`, `[V6]:PORT` or `PORT`.
    public init?(_ text: String) {
        if let port = Int(text), (0...65535).contains(port) {
            self = .tcp(host: "127.0.0.1", port: port)
            return
        }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            // A bare IPv6 address ("::1", "fe80::1:80") is ambiguous: its last group is not a port.
            return nil
        }
        guard !host.isEmpty else { return nil }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unixSocket(let path): path
        }
    }
}

/// Settings of one connection.
public struct ConnectionOptions: Sendable {
    /// Requests a member handles at once; more wait in a queue of the same size, and beyond
    /// that the binding stops reading from the relay (which then holds them, bounded).
    public var maxConcurrentHandlers = 64
    /// Where request, broadcast and tunnel handlers run.
    public var handlerExecution = HandlerExecution.globalExecutor
    /// Receive window granted to the relay for each tunnel: the most a tunnel buffers here.
    public var tunnelWindow: UInt64 = 16 << 20
    /// Events a subscription (or broadcasts a member) buffers before the binding stops reading.
    public var receiveBuffer = 4096
    /// Output the binding buffers before `publish`, `broadcast` and tunnel sends wait.
    public var sendBufferHighWater = 4 << 20
    /// Largest message accepted from the relay, and sent to it: a larger request, reply,
    /// broadcast or event fails alone with `messageTooLarge` (the relay's own limit, 32 MiB by
    /// default, would end the whole connection). Tunnel messages are not bound by it.
    public var maxMessageSize = 32 << 20
    /// Largest tunnel message this binding assembles for `receive()`. Tunnel messages travel in
    /// chunks and may be of any size; the relay holds only what the allowance covers. Here a
    /// message is handed to the application whole, so it is held whole, and a `ByteBuffer`
    /// holds at most 4 GiB − 1 bytes (the default). A larger message ends that tunnel alone,
    /// with `messageTooLarge`.
    public var maxTunnelMessageSize = Int(UInt32.max)
    /// Most headers one message may carry, and the largest encoded headers block: the relay's
    /// defaults (`--max-headers`, `--max-header-bytes`). Beyond them a call fails alone with
    /// `invalidName` instead of the relay closing the connection.
    public var maxHeaders = 64
    public var maxHeaderBytes = 16 << 10
    /// How long `connect` waits for the relay's answer.
    public var handshakeTimeout: Duration = .seconds(5)
    /// Event loop group to use; nil uses the shared singleton.
    public var eventLoopGroup: (any EventLoopGroup)?
    /// Which relay protocol to speak (Docs/skein-1.md).
    public var protocolVersion = ProtocolChoice.automatic
    /// Called (on the connection's event loop; keep it short) when the relay reports that it
    /// did not carry out a broadcast or publish (`skein/1` only: e.g. a `name@network` that is
    /// unreachable or not exported). A refused subscription ends its `Subscription` instead.
    public var onRefused: (@Sendable (Refusal) -> Void)?

    public init() {}
}

/// The relay protocol a connection asks for.
public enum ProtocolChoice: Sendable, Equatable {
    /// The newest the relay speaks: `skein/2`, else `skein/1`, else `v1.0-draft2` (an Iris
    /// node). The default.
    case automatic
    /// `skein/2` only (wildcard subscriptions): connecting to a relay without it fails with
    /// `denied`.
    case skein2
    /// `skein/1` only: connecting to a relay without it fails with `denied`.
    case skein1
    /// `v1.0-draft2` only, as every Iris binding speaks it: failures other than a member's
    /// fault arrive as `timedOut`, at the deadline.
    case irisDraft2
}

/// A broadcast, publish or subscribe the relay did not carry out (`skein/1`).
public struct Refusal: Sendable, Equatable, CustomStringConvertible {
    public enum Operation: Sendable, Equatable { case broadcast, publish, subscribe, other(UInt8) }
    public var operation: Operation
    /// The cluster or topic, as the application named it.
    public var name: String
    /// Why: `.networkUnreachable` or `.notExported`, as a `SkeinError`.
    public var error: SkeinError

    public var description: String { "\(operation) \(name.debugDescription) refused: \(error)" }
}

/// A request as a member sees it.
public struct ServiceRequest: Sendable {
    /// The request body.
    public var body: ByteBuffer
    /// Time left until the caller's deadline when the relay handed the request over.
    public var timeout: Duration
    /// The instant after which an answer is useless: the relay has already timed it out.
    public var deadline: ContinuousClock.Instant
    /// The request's headers (`skein/2`; empty from an older caller or relay). Trace context in
    /// them is already the handler's `ServiceContext.current`.
    public var headers = Headers()

    public init(body: ByteBuffer, timeout: Duration, deadline: ContinuousClock.Instant, headers: Headers = Headers()) {
        self.body = body
        self.timeout = timeout
        self.deadline = deadline
        self.headers = headers
    }
}

/// Serves a cluster. Every method has a default, so a handler implements what it needs.
public protocol ClusterHandler: Sendable {
    /// Answers one request. Throwing sends a fault carrying the error's description
    /// (`SkeinFault` sends exactly its message).
    func handleRequest(_ request: ServiceRequest) async throws -> ByteBuffer
    /// Receives one broadcast; broadcasts are delivered one at a time, in order.
    func handleBroadcast(_ message: ByteBuffer) async
    /// Receives a tunnel some client opened to this cluster; the tunnel is closed when this returns.
    func handleTunnel(_ tunnel: Tunnel) async
    /// Answers one request with a body and headers (`skein/2`). The default answers with
    /// `handleRequest(_:)` and no headers of its own; either way, the reply carries the trace
    /// context the request came with.
    func respond(to request: ServiceRequest) async throws -> Message
    /// Receives one broadcast with its headers. The default calls `handleBroadcast(_:)`.
    func handleBroadcast(_ message: ByteBuffer, headers: Headers) async
}

extension ClusterHandler {
    public func handleRequest(_ request: ServiceRequest) async throws -> ByteBuffer {
        throw SkeinFault("this member does not serve requests")
    }
    public func handleBroadcast(_ message: ByteBuffer) async {}
    public func handleTunnel(_ tunnel: Tunnel) async {}
    public func respond(to request: ServiceRequest) async throws -> Message { Message(try await handleRequest(request)) }
    public func handleBroadcast(_ message: ByteBuffer, headers: Headers) async { await handleBroadcast(message) }
}

/// An error whose message is sent to the caller verbatim as the request's fault.
public struct SkeinFault: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

struct ClosureClusterHandler: ClusterHandler {
    let onRequest: @Sendable (ServiceRequest) async throws -> ByteBuffer
    let onBroadcast: @Sendable (ByteBuffer) async -> Void
    let onTunnel: @Sendable (Tunnel) async -> Void

    func handleRequest(_ request: ServiceRequest) async throws -> ByteBuffer { try await onRequest(request) }
    func handleBroadcast(_ message: ByteBuffer) async { await onBroadcast(message) }
    func handleTunnel(_ tunnel: Tunnel) async { await onTunnel(tunnel) }
}

extension Duration {
    /// Whole milliseconds, rounded up, never negative, saturating at `UInt64.max`.
    var wholeMilliseconds: UInt64 {
        // Both components carry the duration's sign (-5 ms is 0 s and -5e15 as): a negative
        // duration is zero, whichever component shows it.
        let (seconds, attoseconds) = self.components
        if seconds < 0 || attoseconds < 0 { return 0 }
        let fraction = UInt64((attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1000)
        let (millis, carry) = whole.addingReportingOverflow(fraction)
        return overflow || carry ? .max : millis
    }

    /// The same span for NIO's timers: never negative, saturating instead of overflowing.
    var timeAmount: TimeAmount {
        let (seconds, attoseconds) = self.components
        if seconds < 0 || attoseconds < 0 { return .zero }
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (nanos, carry) = whole.addingReportingOverflow(attoseconds / 1_000_000_000)
        return .nanoseconds(overflow || carry ? .max : nanos)
    }
}
