import NIOCore
import SkeinRelay
import SkeinWire

/// A simulated application on one relay.
struct SimClient {
    enum Role: String, Equatable {
        /// Sends requests to cluster `svc` at its share of the scenario's rate.
        case requester
        /// Subscribes to topic `t`, and drops and renews the subscription now and then.
        case subscriber
        /// A member of cluster `svc`: answers every request with its body.
        case member
        /// Publishes numbered events to `t`.
        case publisher
        /// Broadcasts numbered messages to `svc`.
        case broadcaster
        /// Opens tunnels to `svc` and streams numbered messages through them (`SimTunnels`).
        case tunneler
        /// A member of cluster `private`, which no network exports: it answers requests from its
        /// own network only.
        case privateMember
    }

    struct Outstanding {
        var body: ByteBuffer
        var sentAt: Int64
        var deadline: Int64
        /// The cluster asked, as written (`private@us` must be refused).
        var cluster = "svc"
    }

    let index: Int
    let role: Role
    let slot: Int
    /// The relay process it is connected to (a restarted relay gets new clients).
    let process: Int
    let connection: ConnectionID
    let dialect: ProtocolDialect
    var connected = true
    var open = false
    var reading = true
    /// The topics it is subscribed to now.
    var topics: Set<String> = []
    /// Its network (`eu` or `us` when the mesh is federated).
    var network = "dev"
    var sequence: UInt64 = 0
    /// A publisher's ticks (events on `t` and on `secret`).
    var ticks: UInt64 = 0
    var outstanding: [UInt64: Outstanding] = [:]
    /// The last sequence number seen from each sender (events; broadcasts).
    var lastEvent: [Int: UInt64] = [:]
    var lastBroadcast: [Int: UInt64] = [:]
    var tunnels = SimTunnels()

    init(index: Int, role: Role, slot: Int, process: Int, connection: ConnectionID, dialect: ProtocolDialect) {
        self.index = index
        self.role = role
        self.slot = slot
        self.process = process
        self.connection = connection
        self.dialect = dialect
    }

    var name: String { "client \(index) (\(role.rawValue), \(dialect.version), on relay-\(slot))" }

    mutating func nextSequence() -> UInt64 {
        sequence += 1
        return sequence
    }

    static func body(sender: Int, sequence: UInt64) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt64(sender))
        buffer.writeInteger(sequence)
        return buffer
    }

    static func decode(_ body: ByteBuffer) -> (sender: Int, sequence: UInt64)? {
        guard body.readableBytes == 16, let sender = body.getInteger(at: body.readerIndex, as: UInt64.self),
            let sequence = body.getInteger(at: body.readerIndex + 8, as: UInt64.self)
        else { return nil }
        return (Int(sender), sequence)
    }
}

/// The mesh's promises, checked at every frame a client receives (Docs/simulator.md,
/// "Invariants"):
///
/// 1. Every request gets exactly one answer — a reply, a fault, a timeout, a `skein/1` failure,
///    or the end of its connection — and the reply carries its own request's body.
/// 2. No answer comes after the request's deadline (unless the caller's relay was paused).
/// 3. No event or broadcast arrives twice or out of order per sender (FIFO per publisher per
///    subscriber, per sender per member).
/// 4. No event reaches a connection not subscribed to its topic; no broadcast or request
///    reaches a connection that is not a member.
/// 5. No relay closes, denies or confuses a well-behaved client; `skein/1` frames reach only
///    `skein/1` connections.
///
/// 7. Federation delivers only what is exported: no event of an unexported topic reaches
///    another network, no request from another network reaches a member of an unexported
///    cluster, and a request to one is refused.
///
/// Tunnels (6) are checked by `SimTunnels`.
struct MeshInvariants {
    var checks = 0
    var answers = MeshReport.Answers()
    var events = 0
    /// Events of the other network's topic, and replies from the other network's members.
    var federatedEvents = 0
    var federatedReplies = 0
    var broadcastsDelivered = 0
    /// Events or broadcasts missed between two a receiver got (at most once allows it; a
    /// renewed subscription makes some).
    var gaps = 0
    var firstViolation: MeshReport.Violation?

    mutating func violation(_ what: String, at time: Int64) {
        guard firstViolation == nil else { return }
        firstViolation = MeshReport.Violation(seconds: Double(time) / 1e9, what: what)
    }

    mutating func connectionLost(_ client: inout SimClient, at time: Int64) {
        answers.connectionLost += client.outstanding.count
        client.outstanding = [:]
        // Its tunnels end with it.
        client.tunnels.initiated = [:]
        client.tunnels.accepted = [:]
    }

    mutating func received(_ frame: RelayFrame, by client: inout SimClient, at time: Int64, pausedRelay pausedUntil: Int64) {
        checks += 1
        switch frame {
        case .reply(let id, let outcome):
            guard let request = answered(id, by: &client, at: time, pausedUntil: pausedUntil) else { return }
            switch outcome {
            case .success(let body):
                answers.replies += 1
                if body != request.body { violation("\(client.name): the reply to request \(id) carries another request's body", at: time) }
                if request.cluster.contains("@") { federatedReplies += 1 }
                if request.cluster.hasPrefix("private@") { violation("\(client.name): request \(id) to \(request.cluster), which is not exported, was answered by a member", at: time) }
            case .fault(let fault):
                answers.faults += 1
                if fault.hasPrefix("not exported") { answers.notExported += 1 }
            case .timedOut:
                answers.timeouts += 1
            }
        case .requestFailed(let id, let reason, _):
            if client.dialect.hasFailureFrames == false { violation("\(client.name): a skein/1 failure on a \(client.dialect.version) connection", at: time) }
            guard answered(id, by: &client, at: time, pausedUntil: pausedUntil) != nil else { return }
            answers.failures[reason.description, default: 0] += 1
        case .publish(let topic, let event):
            events += 1
            guard client.topics.contains(topic) else {
                violation("\(client.name): an event on \(topic) while not subscribed to it", at: time)
                return
            }
            if topic.hasPrefix("secret@") {
                violation("\(client.name): an event on \(topic), which its network does not export", at: time)
                return
            }
            if topic.contains("@") { federatedEvents += 1 }
            inOrder(event, last: &client.lastEvent, what: "event", client: client, at: time)
        case .broadcast(let message):
            broadcastsDelivered += 1
            guard client.role == .member else {
                violation("\(client.name): a broadcast to a connection that is no member", at: time)
                return
            }
            inOrder(message, last: &client.lastBroadcast, what: "broadcast", client: client, at: time)
        case .refused(_, let name, let reason, _):
            // A skein/1 broadcast with nobody in the cluster yet: a fair answer.
            if client.dialect.hasFailureFrames == false { violation("\(client.name): REFUSED on a \(client.dialect.version) connection", at: time) }
            answers.refusals[reason.description, default: 0] += 1
            _ = name
        case .event(let subscription, let topic, _, _):
            // The simulated clients speak v1.0-draft2 and skein/1: no pattern, no EVENT.
            violation("\(client.name): EVENT for \(subscription) on \(topic) on a \(client.dialect.version) connection", at: time)
        case .hbroadcast, .hrequest, .hreply, .surveyAnswer, .surveyEnd:
            // Nor headers.
            violation("\(client.name): \(frame.opcode), a skein/2 frame, on a \(client.dialect.version) connection", at: time)
        case .close(let reason):
            violation("\(client.name): closed by its relay: \(reason)", at: time)
        case .deny(_, let reason):
            violation("\(client.name): denied: \(reason)", at: time)
        case .initialize:
            violation("\(client.name): a second INIT", at: time)
        case .request:
            break  // the simulation answers it
        case .tunnelInit, .tunnelConfirm, .tunnelAllow, .tunnelTransfer, .tunnelClose, .tunnelFailed:
            break  // `SimTunnels` checks them
        }
    }

    private mutating func answered(_ id: UInt64, by client: inout SimClient, at time: Int64, pausedUntil: Int64) -> SimClient.Outstanding? {
        guard let request = client.outstanding.removeValue(forKey: id) else {
            violation("\(client.name): an answer to request \(id), which it does not wait for (a second answer?)", at: time)
            return nil
        }
        if time > request.deadline && pausedUntil < request.sentAt {
            violation(
                "\(client.name): request \(id) answered \(Double(time - request.deadline) / 1e6) ms after its deadline", at: time)
        }
        return request
    }

    private mutating func inOrder(_ body: ByteBuffer, last: inout [Int: UInt64], what: String, client: SimClient, at time: Int64) {
        guard let (sender, sequence) = SimClient.decode(body) else {
            violation("\(client.name): a \(what) with a body nobody sent", at: time)
            return
        }
        let previous = last[sender] ?? 0
        guard sequence > previous else {
            violation("\(client.name): \(what) \(sequence) from client \(sender) after \(previous) (doubled or out of order)", at: time)
            return
        }
        if sequence > previous + 1 { gaps += 1 }
        last[sender] = sequence
    }
}
