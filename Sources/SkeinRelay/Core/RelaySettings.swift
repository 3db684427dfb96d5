import NIOCore
import SkeinRouting
import SkeinWire

/// Every limit the relay enforces on client connections. Each one is a documented `skein relay`
/// flag (Docs/relay-settings.md).
public struct RelaySettings: Sendable, Equatable {
    /// Limits on decoded fields: message size and string size.
    public var wire = WireLimits()
    /// A connection that has not completed INIT within this time is closed.
    public var handshakeTimeout: TimeAmount = .seconds(5)
    /// Largest tunnel chunk a binding may send; announced in TUNNEL INIT / CONFIRM.
    public var tunnelChunkLimit: UInt64 = 64 << 10
    /// Allowance the relay grants each side of a tunnel: the most it buffers per direction.
    public var tunnelBuffer: UInt64 = 4 << 20
    /// Requests (and tunnel builds) a connection may have outstanding before the relay stops
    /// reading from it until some are answered.
    public var maxPendingRequests: Int = 65_536
    /// Tunnels (open or building) one connection may hold; more is a protocol violation.
    public var maxTunnelsPerConnection: Int = 4_096
    /// Longest deadline honoured; larger timeouts are clamped to it.
    public var maxTimeout: TimeAmount = .hours(24)
    /// A connection whose output has been blocked (above the send buffer high-water mark) for
    /// this long is closed as a slow consumer.
    public var slowConsumerTimeout: TimeAmount = .seconds(10)
    /// Bytes of events and broadcasts from other relays queued for a connection while its output
    /// is blocked; one more and it is closed as a slow consumer at once. Local senders to a
    /// blocked connection are paused instead; a peer link carries every kind of traffic between
    /// two relays and is not paused for one subscriber, so this bounds what a flat-out publisher
    /// on another relay can pile up here before `slowConsumerTimeout`.
    public var slowConsumerBytes: UInt64 = 64 << 20
    /// How long a HOLD this relay asks of another lasts unless refreshed (Docs/mesh.md, "Flow
    /// control"); it is refreshed every half lease while a receiver here still needs it. A lost
    /// RELEASE pauses a sender at most this long.
    public var holdLease: TimeAmount = .seconds(1)
    /// Where requests go when the mesh offers several relays (Docs/mesh.md).
    public var routing = RoutingPolicy()
    /// This relay's network and, for a gateway, what it exports (Docs/federation.md).
    public var federation = FederationPolicy()

    public init() {}

    /// The decoder's limits: the wire limits with the tunnel chunk limit applied, so an
    /// oversized chunk ends the connection as soon as its length is read.
    public var decoderLimits: WireLimits {
        var limits = wire
        limits.maxChunkSize = Int(effectiveChunkLimit)
        return limits
    }

    /// The chunk limit must not exceed what the decoder accepts in one frame.
    public var effectiveChunkLimit: UInt64 {
        min(tunnelChunkLimit, UInt64(wire.maxMessageSize))
    }
}
