import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay

/// Drives a `RelayCore` with a fake clock: every call feeds one event at `now` and returns the
/// actions it produced. No sockets, no event loop.
struct CoreDriver {
    var core: RelayCore
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    private var lastID: UInt64 = 0

    init(_ configure: (inout RelaySettings) -> Void = { _ in }) {
        var settings = RelaySettings()
        configure(&settings)
        core = RelayCore(settings: settings)
    }

    /// A new socket that has not sent anything yet.
    mutating func open() -> ConnectionID {
        lastID += 1
        let id = ConnectionID(lastID)
        var actions: [RelayAction] = []
        core.connectionOpened(id, now: now, actions: &actions)
        #expect(actions.isEmpty)
        return id
    }

    /// A connection that completed its handshake, as a plain client or a member of `cluster`.
    mutating func connect(
        cluster: String = "", dialect: ProtocolDialect = .iris, sourceLocation: SourceLocation = #_sourceLocation
    ) -> ConnectionID {
        let id = open()
        let actions = send(.initialize(magic: RelayProtocol.clientMagic, version: dialect.version, cluster: cluster), from: id)
        #expect(actions.frames(to: id).first == .initialize(magic: RelayProtocol.relayMagic, version: dialect.version), sourceLocation: sourceLocation)
        return id
    }

    mutating func send(_ frame: ClientFrame, from id: ConnectionID) -> [RelayAction] {
        var actions: [RelayAction] = []
        core.received(frame, from: id, now: now, actions: &actions)
        return actions
    }

    /// Moves the clock forward and fires whatever timers are due.
    mutating func advance(_ amount: TimeAmount) -> [RelayAction] {
        now = now + amount
        var actions: [RelayAction] = []
        core.expireTimers(now: now, actions: &actions)
        return actions
    }

    /// The socket went away.
    mutating func lose(_ id: ConnectionID) -> [RelayAction] {
        var actions: [RelayAction] = []
        core.connectionClosed(id, now: now, actions: &actions)
        return actions
    }

    mutating func writability(_ id: ConnectionID, _ writable: Bool) -> [RelayAction] {
        var actions: [RelayAction] = []
        core.writabilityChanged(id, writable: writable, now: now, actions: &actions)
        return actions
    }

    mutating func malformed(_ id: ConnectionID, _ error: WireError) -> [RelayAction] {
        var actions: [RelayAction] = []
        core.malformedInput(id, error: error, actions: &actions)
        return actions
    }
}

extension Array where Element == RelayAction {
    /// Frames queued for `id`, in order.
    func frames(to id: ConnectionID) -> [RelayFrame] {
        compactMap { action in
            if case .send(id, let frame) = action { frame } else { nil }
        }
    }

    /// Every frame queued, with its destination, in order.
    var sent: [(ConnectionID, RelayFrame)] {
        compactMap { action in
            if case .send(let id, let frame) = action { (id, frame) } else { nil }
        }
    }

    var disconnected: [ConnectionID] {
        compactMap { action in
            if case .disconnect(let id) = action { id } else { nil }
        }
    }

    var reports: [RelayEvent] {
        compactMap { action in
            if case .report(let event) = action { event } else { nil }
        }
    }

    var violations: [String] {
        reports.compactMap { event in
            if case .protocolViolation(_, let reason) = event { reason } else { nil }
        }
    }

    /// Every action other than reports (which are for logs and metrics only).
    var effects: [RelayAction] {
        filter { if case .report = $0 { false } else { true } }
    }

    /// The reason of the CLOSE queued for `id` before its disconnect, if the core closed it so.
    func closeReason(of id: ConnectionID) -> String? {
        guard disconnected.contains(id) else { return nil }
        for frame in frames(to: id) {
            if case .close(let reason) = frame { return reason }
        }
        return nil
    }
}

func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

func bytes(_ count: Int, _ value: UInt8 = 0x61) -> ByteBuffer {
    ByteBuffer(repeating: value, count: count)
}
