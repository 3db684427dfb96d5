import NIOCore
import SkeinRelay
import SkeinWire

/// Tunnels in the whole-mesh simulation: a tunneler on every fourth relay opens tunnels to
/// cluster `svc` and streams `tunnelMessages` numbered messages within the allowance it is
/// given, then closes; members accept every tunnel, grant a window, and give it back as they
/// read. Checked at every frame and at the end (Docs/simulator.md, "Invariants"):
///
/// 6. A tunnel's messages arrive complete and in order, each once, never beyond the window the
///    member granted; a tunnel closed gracefully delivered every message; a tunnel that fails
///    fails at both ends (no end is left open once the other has ended).
struct SimTunnels {
    /// The initiator's end of a tunnel.
    enum Initiated {
        /// TUNNEL INIT sent, at this time.
        case building(since: Int64)
        /// Built: `allowance` bytes may be sent; `sent` messages have been.
        case open(allowance: UInt64, sent: Int, since: Int64)
        /// Every message sent and TUNNEL CLOSE with them; waiting for the relay's close.
        case closing(since: Int64)
    }

    /// The member's end of a tunnel.
    struct Accepted {
        /// The initiator (client index and its tunnel id), from the first message.
        var origin: (client: Int, tunnel: UInt64)?
        var received: UInt64 = 0
        /// Bytes the member granted and has not yet received.
        var window: UInt64
        /// The last time anything happened on it.
        var since: Int64
    }

    var initiated: [UInt64: Initiated] = [:]
    var accepted: [UInt64: Accepted] = [:]
    /// Initiated tunnels whose close the relay acknowledged (the initiator's end is done).
    var closed: Set<UInt64> = []
    var nextID: UInt64 = 0

    static let window: UInt64 = 4096
    static let messageSize = 24

    static func message(client: Int, tunnel: UInt64, sequence: UInt64) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt64(client))
        buffer.writeInteger(tunnel)
        buffer.writeInteger(sequence)
        return buffer
    }

    static func decode(_ chunk: ByteBuffer) -> (client: Int, tunnel: UInt64, sequence: UInt64)? {
        guard chunk.readableBytes == messageSize,
            let client = chunk.getInteger(at: chunk.readerIndex, as: UInt64.self),
            let tunnel = chunk.getInteger(at: chunk.readerIndex + 8, as: UInt64.self),
            let sequence = chunk.getInteger(at: chunk.readerIndex + 16, as: UInt64.self)
        else { return nil }
        return (Int(client), tunnel, sequence)
    }
}

extension MeshSimulation {
    /// A tunneler's tick: one more tunnel.
    mutating func openTunnel(_ index: Int) {
        clients[index].tunnels.nextID += 1
        let id = clients[index].tunnels.nextID
        clients[index].tunnels.initiated[id] = .building(since: time)
        report.tunnels.opened += 1
        clientSend(index, .tunnelInit(tunnelID: id, cluster: "svc", timeoutMillis: UInt64(scenario.requestTimeout.nanoseconds / 1_000_000)))
    }

    /// A tunnel frame from the relay to a client.
    mutating func tunnelFrame(_ index: Int, _ frame: RelayFrame) {
        invariants.checks += 1
        let name = clients[index].name
        switch frame {
        case .tunnelInit(let buildID, _):
            // A member accepts every tunnel and grants it a window.
            guard clients[index].role == .member else {
                invariants.violation("\(name): a tunnel build reached a connection that is no member", at: time)
                return
            }
            clients[index].tunnels.nextID += 1
            let id = clients[index].tunnels.nextID
            clients[index].tunnels.accepted[id] = SimTunnels.Accepted(window: SimTunnels.window, since: time)
            report.tunnels.accepted += 1
            clientSend(index, .tunnelConfirm(buildID: buildID, tunnelID: id))
            clientSend(index, .tunnelAllow(tunnelID: id, bytes: SimTunnels.window))
        case .tunnelConfirm(let id, let outcome):
            guard case .building? = clients[index].tunnels.initiated[id] else {
                invariants.violation("\(name): TUNNEL CONFIRM for tunnel \(id), which it is not building", at: time)
                return
            }
            switch outcome {
            case .timedOut:
                clients[index].tunnels.initiated[id] = nil
                report.tunnels.buildsTimedOut += 1
            case .built:
                clients[index].tunnels.initiated[id] = .open(allowance: 0, sent: 0, since: time)
                report.tunnels.built += 1
            }
        case .tunnelFailed(let id, let reason, _):
            guard case .building? = clients[index].tunnels.initiated[id] else {
                invariants.violation("\(name): TUNNEL FAILED for tunnel \(id), which it is not building", at: time)
                return
            }
            if clients[index].dialect.hasFailureFrames == false { invariants.violation("\(name): a skein/1 tunnel failure on a \(clients[index].dialect.version) connection", at: time) }
            clients[index].tunnels.initiated[id] = nil
            report.tunnels.buildsFailed[reason.description, default: 0] += 1
        case .tunnelAllow(let id, let bytes):
            if clients[index].tunnels.accepted[id] != nil { return }  // the relay's window for a member that never sends
            switch clients[index].tunnels.initiated[id] {
            case .open(let allowance, let sent, _):
                clients[index].tunnels.initiated[id] = .open(allowance: allowance + bytes, sent: sent, since: time)
                pumpTunnel(index, id)
            case .closing:
                return
            case .building, nil:
                invariants.violation("\(name): TUNNEL ALLOW for tunnel \(id), which is not open", at: time)
            }
        case .tunnelTransfer(let id, _, let chunk):
            guard var end = clients[index].tunnels.accepted[id] else {
                invariants.violation("\(name): tunnel data for tunnel \(id), which it did not accept", at: time)
                return
            }
            let size = UInt64(chunk.readableBytes)
            guard size <= end.window else {
                invariants.violation("\(name): tunnel \(id) delivered \(size) bytes with a window of \(end.window)", at: time)
                return
            }
            guard let message = SimTunnels.decode(chunk) else {
                invariants.violation("\(name): tunnel \(id) delivered bytes nobody sent", at: time)
                return
            }
            if let origin = end.origin, origin.client != message.client || origin.tunnel != message.tunnel {
                invariants.violation("\(name): tunnel \(id) delivered another tunnel's message", at: time)
                return
            }
            guard message.sequence == end.received + 1 else {
                invariants.violation("\(name): tunnel \(id) delivered message \(message.sequence) after \(end.received) (lost, doubled or out of order)", at: time)
                return
            }
            end.origin = (message.client, message.tunnel)
            end.received = message.sequence
            end.since = time
            report.tunnels.messagesDelivered += 1
            // Read at once: the window goes back to the sender.
            clients[index].tunnels.accepted[id] = end
            clientSend(index, .tunnelAllow(tunnelID: id, bytes: size))
        case .tunnelClose(let id, let reason):
            if let end = clients[index].tunnels.accepted.removeValue(forKey: id) {
                if reason.isEmpty {
                    if end.received != UInt64(scenario.tunnelMessages) {
                        invariants.violation("\(name): tunnel \(id) closed gracefully after \(end.received) of \(scenario.tunnelMessages) messages", at: time)
                    }
                    report.tunnels.completed += 1
                } else {
                    report.tunnels.failedAtMember += 1
                    // Its initiator had closed and heard the relay's acknowledgement: it cannot
                    // hear this failure (TUNNEL CLOSE is acknowledged at once, as in Iris).
                    if let origin = end.origin, origin.client < clients.count, clients[origin.client].tunnels.closed.contains(origin.tunnel) {
                        report.tunnels.failedAfterClose += 1
                    }
                }
                return
            }
            switch clients[index].tunnels.initiated.removeValue(forKey: id) {
            case .closing:
                if reason.isEmpty { clients[index].tunnels.closed.insert(id) } else { report.tunnels.failedAtInitiator += 1 }
            case .open:
                if reason.isEmpty { invariants.violation("\(name): tunnel \(id) closed gracefully, but neither end closed it", at: time) }
                report.tunnels.failedAtInitiator += 1
            case .building, nil:
                invariants.violation("\(name): TUNNEL CLOSE for tunnel \(id), which is not open", at: time)
            }
        default:
            break
        }
    }

    /// Sends what the initiator's allowance lets it, then closes once every message is out.
    mutating func pumpTunnel(_ index: Int, _ id: UInt64) {
        guard case .open(var allowance, var sent, _) = clients[index].tunnels.initiated[id] else { return }
        let size = UInt64(SimTunnels.messageSize)
        while sent < scenario.tunnelMessages, allowance >= size {
            sent += 1
            allowance -= size
            let chunk = SimTunnels.message(client: index, tunnel: id, sequence: UInt64(sent))
            clientSend(index, .tunnelTransfer(tunnelID: id, sizeOrContinuation: size, chunk: chunk))
        }
        if sent == scenario.tunnelMessages {
            clients[index].tunnels.initiated[id] = .closing(since: time)
            clientSend(index, .tunnelClose(tunnelID: id))
        } else {
            clients[index].tunnels.initiated[id] = .open(allowance: allowance, sent: sent, since: time)
        }
    }

    var openTunnelEnds: Int {
        clients.reduce(0) { $0 + ($1.connected ? $1.tunnels.initiated.count + $1.tunnels.accepted.count : 0) }
    }

    /// After the run: while tunnel ends are open, the mesh runs on (no new traffic) for up to
    /// `tunnelSettle`, so frames that a lossy link holds in retransmission arrive, as they would.
    mutating func settleTunnels() {
        let limit = time + scenario.tunnelSettle.nanoseconds
        while openTunnelEnds > 0, invariants.firstViolation == nil, let next = queue.min, next.at <= limit {
            _ = queue.popMin()
            time = next.at
            step(next.kind)
        }
    }

    /// At the end: no tunnel end is left open (each completed, failed, or went with its
    /// connection) once the run has drained.
    mutating func checkTunnelsEnded() {
        let settled = time - Int64(scenario.drain * 1e9) / 2 - scenario.tunnelSettle.nanoseconds
        for index in clients.indices where clients[index].connected {
            for (id, end) in clients[index].tunnels.initiated.sorted(by: { $0.key < $1.key }) {
                let since: Int64 = switch end {
                case .building(let t), .open(_, _, let t), .closing(let t): t
                }
                report.tunnels.openAtEnd += 1
                if since < settled {
                    invariants.violation("\(clients[index].name): tunnel \(id) still open at its initiator at the end (\(end))", at: time)
                    return
                }
            }
            for (id, end) in clients[index].tunnels.accepted.sorted(by: { $0.key < $1.key }) {
                report.tunnels.openAtEnd += 1
                if end.since < settled {
                    let origin = end.origin.map { "client \($0.client)'s tunnel \($0.tunnel)" } ?? "no message yet"
                    invariants.violation("\(clients[index].name): tunnel \(id) (\(origin), \(end.received) messages) still open at its member at the end", at: time)
                    return
                }
            }
        }
    }
}
