import DequeModule
import HeapModule
import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinRouting
import SkeinWire

/// Identifies one client connection of a relay. Assigned by the shell, never reused.
public struct ConnectionID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "c\(rawValue)" }
}

/// What the relay core asks its shell to do. The core performs no I/O of its own.
public enum RelayAction: Sendable, Equatable {
    /// Queue a frame for a connection (written at the end of the current batch).
    case send(ConnectionID, RelayFrame)
    /// Queue a frame for another relay's peer link (opened if needed).
    case sendPeer(NodeID, PeerFrame)
    /// Write whatever is queued for the connection, then close its socket.
    case disconnect(ConnectionID)
    /// Stop reading from a connection (backpressure); `resumeReading` undoes it.
    case pauseReading(ConnectionID)
    case resumeReading(ConnectionID)
    /// Something worth a log line and a metric.
    case report(RelayEvent)
    // The mesh (only `RelayLoop` emits these).
    /// Send `frame` on the link to the relay listening at the address, dialing one if there is
    /// none: the relay has no established link (`RelayInput.peerUnsent`), or the frame is a
    /// membership message to an address.
    case sendPeerAt(MemberAddress, PeerFrame)
    /// Seal one gossip datagram and send it.
    case sendDatagram([UInt8], to: MemberAddress)
    /// End every link to the relay at once with a TCP reset: it was held dead, and its old
    /// links sit in TCP's retransmission backoff (Docs/operations.md, "The gossip socket").
    case resetPeerLinks(NodeID, reason: String)
}

/// Why a remote relay cannot take new work (`RelayCore.relayUnavailable`).
public enum RelayLoss: Sendable, Equatable {
    /// Membership suspects it: no new work, what it has continues.
    case suspect
    /// Its peer link ended without a goodbye: what was sent on it may have arrived.
    case linkBroken
    /// A dial to it failed: nothing queued for it was ever sent.
    case neverReached
    /// It left the mesh gracefully: it still answers what it holds, then goes.
    case left
    /// Membership declared it dead, or forgot it.
    case dead
}

/// Notable events, for logs and metrics.
public enum RelayEvent: Sendable, Equatable {
    case handshakeCompleted(ConnectionID, cluster: String)
    case handshakeRejected(ConnectionID, reason: String)
    case protocolViolation(ConnectionID, reason: String)
    /// Closed as a slow consumer, with the reason its CLOSE carries.
    case slowConsumer(ConnectionID, reason: String)
    /// A HOLD from this relay was ignored: it already holds `FlowHolds.maxGrantsPerRelay` streams here.
    case holdsRefused(NodeID)
    /// A SURVEY from this relay (or gateway link) was not carried out: it already has
    /// `maxPendingRequests` surveys here. It was answered at once, every member counted lost.
    case surveyRefused(NodeID)
    case connectionClosed(ConnectionID, graceful: Bool)
    case requestTimedOut(cluster: String, handedToMember: Bool)
    case lateReplyDropped(ConnectionID)
    case broadcastWithoutMembers(cluster: String)
    /// A remote relay had no member for a request any more; it went elsewhere (or waits).
    case requestRerouted(cluster: String, from: NodeID)
    /// Federation: another network's gateway asked for something this network does not export
    /// to it (Docs/federation.md §2).
    case federationRefused(network: String, kind: ExportKinds, name: String)
    /// Federation: a broadcast, publish or event for another network could not be carried.
    case federationDropped(network: String, reason: String)
    /// Federation: this relay's first gateway link to a network came up, or its last one went.
    case federationLinkChanged(network: String, up: Bool)
    /// Membership decided something about a relay (this one included).
    case membership(MembershipEvent)
    /// This relay's clusters and topics do not fit in its membership metadata: the last good
    /// metadata stays advertised.
    case metadataRejected(reason: String)
    /// Shutdown: no request or survey is in flight any more, or the drain's time is up with
    /// `unanswered` still pending.
    case drained(unanswered: Int)
    /// Shutdown: the last client connection is gone.
    case allClosed
}

/// The relay's protocol logic for its local connections: handshake, cluster membership, request
/// routing and deadlines, broadcast, publish/subscribe, tunnels with allowance in both directions,
/// and backpressure. A value type with no I/O and no clock: every event carries `now`, and every
/// consequence is a `RelayAction` appended to `actions`.
///
/// Other relays (the mesh) are destinations too: `routing` says which relays serve which
/// clusters and topics, and frames for them leave as `.sendPeer` (Docs/mesh.md).
public struct RelayCore {
    public let settings: RelaySettings
    var routing: RoutingTable
    /// Remote relays whose peer link cannot take more bytes now, with the local connections
    /// paused because they published or broadcast to them meanwhile.
    var blockedRelays: [NodeID: Set<ConnectionID>] = [:]
    /// Holds asked of other relays for blocked receivers here, and granted to them.
    var holds = FlowHolds()
    /// When the refresh of asked holds is due, while its timer is armed.
    var refreshDue: NIODeadline?
    var connections: [ConnectionID: Connection] = [:]
    var clusters: [String: ClusterDirectory] = [:]
    var topics = TopicIndex()
    var requests = RequestTable()
    /// `skein/2` surveys this relay takes part in, by key (RelayCore+Surveys.swift).
    var surveys: [UInt64: Survey] = [:]
    /// Surveys here per relay (or gateway link) that sent them, for the bound on them.
    var surveysFrom: [NodeID: Int] = [:]
    var builds: [UInt64: PendingBuild] = [:]
    var waitingBuilds = WaitingQueues()
    var tunnels: [UInt64: Tunnel] = [:]
    var nextKey: UInt64 = 0
    var timers = Heap<TimerEntry>()
    /// Inside `closeAll`: every connection is about to hear the shutdown's reason.
    var closingAll = false
    var lastPublishRoute: PublishRoute?
    /// Recent publish routes by topic, valid for the versions beside them (`publishRoute`).
    var publishRoutes: [String: PublishRoute] = [:]
    var publishRoutesVersion: (UInt64, UInt64) = (.max, .max)
    /// The connection `received` last found open (`markClosed` and `connectionClosed` forget it).
    var lastOpen: ConnectionID?
    /// `lastOpen`'s protocol version, read with it (a publish checks it per frame).
    var lastOpenDialect = ProtocolDialect.iris
    /// The last topic a `skein/2` publish was found publishable with (decoded names are
    /// interned, so a flood to one topic compares one pointer instead of scanning it).
    var lastPublishable: String?
    /// Connections whose output is blocked (not writable) now.
    var blockedConnections = 0
    /// Gateways of other networks this relay holds gateway links to (Docs/federation.md).
    var foreign = ForeignGateways()
    /// The last broadcast or publish to another network: where it went, or why it could not.
    var lastRemoteSend: RemoteSendRoute?
    /// The last `name@network` read (`remoteName`).
    var lastRemoteName: (text: String, name: FederatedName)?
    /// The last export decision for what a gateway link sent in.
    var lastAdmission: (node: NodeID, kind: ExportKinds, name: String, allowed: Bool)?
    /// The interest last sent on each gateway link.
    var sentInterest: [NodeID: SentInterest] = [:]
    /// This relay's node id in its network's membership (the shell sets it), to tell whether it
    /// is the designated gateway.
    public var localNode = NodeID(high: 0, low: 0)

    public init(settings: RelaySettings, zone: String = "", seed: UInt64 = 0) {
        self.settings = settings
        self.routing = RoutingTable(localZone: zone, policy: settings.routing, seed: seed)
    }

    // MARK: - Introspection

    public var connectionCount: Int { connections.count }
    public var pendingRequestCount: Int { requests.count }
    public var surveyCount: Int { surveys.count }
    public var tunnelCount: Int { tunnels.count }
    /// Names of clusters with at least one member, with member counts.
    public var clusterMembership: [String: Int] { clusters.mapValues(\.members.count) }
    /// Topics subscribed to here, with subscription counts: local connections' and, as a
    /// gateway, other networks' interest (what this relay's metadata advertises).
    public var topicSubscriptions: [String: Int] { advertisedTopics }
    /// `skein/2` patterns subscribed to by local connections, with subscription counts.
    public var patternSubscriptions: [String: Int] { topics.patternCounts }
    /// Changes whenever a cluster gains or loses a member or a topic a subscription: the mesh
    /// compares it to know when to advertise new metadata.
    public internal(set) var directoryVersion: UInt64 = 0
    /// The earliest time at which `expireTimers(now:)` has work; the shell wakes up then.
    public var nextDeadline: NIODeadline? { timers.min?.deadline }

    // MARK: - Connection lifecycle

    public mutating func connectionOpened(_ id: ConnectionID, now: NIODeadline, actions: inout [RelayAction]) {
        precondition(connections[id] == nil, "connection id reused")
        connections[id] = Connection()
        schedule(.handshake(id), at: now + settings.handshakeTimeout)
    }

    /// The socket is gone (EOF, reset, or after a `disconnect`). Cleans up everything it held.
    public mutating func connectionClosed(_ id: ConnectionID, now: NIODeadline, actions: inout [RelayAction]) {
        guard let conn = connections[id] else { return }
        detach(id, reason: "remote connection closed", actions: &actions)
        connections[id] = nil
        lastOpen = nil
        if !conn.writable { blockedConnections -= 1 }
        if holds.hasAsked || holds.hasGrants {
            release(holds.connectionGone(id, heldBy: conn.heldBy), actions: &actions)
        }
        // A close the relay already decided (graceful CLOSE, violation, shutdown) was reported then.
        if conn.phase != .closed {
            actions.append(.report(.connectionClosed(id, graceful: false)))
        }
    }

    /// The shell could not decode the connection's byte stream.
    public mutating func malformedInput(_ id: ConnectionID, error: WireError, actions: inout [RelayAction]) {
        violation(id, "protocol violation: \(error)", actions: &actions)
    }

    /// The socket reached EOF in the middle of a frame.
    public mutating func truncatedInput(_ id: ConnectionID, bufferedBytes: Int, actions: inout [RelayAction]) {
        guard connections[id] != nil else { return }
        actions.append(.report(.protocolViolation(id, reason: "EOF in the middle of a frame (\(bufferedBytes) bytes buffered)")))
    }

    /// The connection's output crossed its high (false) or low (true) water mark.
    public mutating func writabilityChanged(_ id: ConnectionID, writable: Bool, now: NIODeadline, actions: inout [RelayAction]) {
        guard var conn = connections[id], conn.writable != writable else { return }
        conn.writable = writable
        conn.queuedWhileBlocked = 0
        blockedConnections += writable ? -1 : 1
        if writable {
            let waiters = conn.blockedSources
            conn.blockedSources = []
            connections[id] = conn
            for source in waiters { unblock(source, from: id, actions: &actions) }
            if holds.hasAsked { release(holds.receiverDone(id), actions: &actions) }
        } else {
            conn.blockedSince = now
            connections[id] = conn
            schedule(.slowConsumer(id, since: now), at: now + settings.slowConsumerTimeout)
        }
    }

    /// Ends every connection with `reason` (relay shutdown). Callers hear that reason, not
    /// "member lost" for members closed before them.
    public mutating func closeAll(reason: String, actions: inout [RelayAction]) {
        closingAll = true
        defer { closingAll = false }
        for id in connections.keys.sorted() {
            closeWithReason(id, reason, actions: &actions)
        }
        // Surveys other relays sent here end now, not at their deadline: nothing here answers
        // them any more.
        for key in surveys.keys.sorted() { expireSurvey(key, actions: &actions) }
    }

    // MARK: - Frames

    public mutating func received(_ frame: ClientFrame, from id: ConnectionID, now: NIODeadline, actions: inout [RelayAction]) {
        // A flood comes from one connection at a time: the last one found open is remembered
        // (until any connection closes), so its record is not looked up per frame.
        if lastOpen != id {
            // Only the phase, read in place: a copy of the record would retain every collection in it.
            guard let phase = Self.phase(of: &connections[id]), phase != .closed else { return }
            if phase == .awaitingInit {
                guard case .initialize(let magic, let version, let cluster) = frame else {
                    reject(id, "first frame was \(frame.opcode), not INIT", actions: &actions)
                    return
                }
                handshake(id, magic: magic, version: version, cluster: cluster, now: now, actions: &actions)
                return
            }
            lastOpen = id
            lastOpenDialect = Self.dialect(of: &connections[id])
        }
        switch frame {
        case .initialize:
            violation(id, "protocol violation: INIT sent twice", actions: &actions)
        case .close:
            detach(id, reason: "remote connection closed", actions: &actions)
            markClosed(id)
            actions.append(.send(id, .close(reason: "")))
            actions.append(.disconnect(id))
            actions.append(.report(.connectionClosed(id, graceful: true)))
        case .broadcast(let cluster, let message):
            broadcast(from: id, cluster: cluster, message: message, actions: &actions)
        case .request(let requestID, let cluster, let body, let timeout):
            request(from: id, id: requestID, cluster: cluster, body: body, timeoutMillis: timeout, now: now, actions: &actions)
        case .reply(let requestID, let outcome):
            reply(from: id, id: requestID, outcome: outcome, actions: &actions)
        case .subscribe(let topic):
            subscribe(id, topic: topic, actions: &actions)
        case .unsubscribe(let topic):
            unsubscribe(id, topic: topic, actions: &actions)
        case .publish(let topic, let event):
            // `lastOpen` is `id` here: its dialect without copying its record.
            if lastOpenDialect >= .skein2, !checkPublishable(id, topic: topic, actions: &actions) { return }
            publish(from: id, topic: topic, event: event, actions: &actions)
        case .tunnelInit(let tunnelID, let cluster, let timeout):
            tunnelInit(from: id, tunnelID: tunnelID, cluster: cluster, timeoutMillis: timeout, now: now, actions: &actions)
        case .tunnelConfirm(let buildID, let tunnelID):
            tunnelConfirm(from: id, buildID: buildID, tunnelID: tunnelID, actions: &actions)
        case .tunnelAllow(let tunnelID, let bytes):
            tunnelAllow(from: id, tunnelID: tunnelID, bytes: bytes, actions: &actions)
        case .tunnelTransfer(let tunnelID, let size, let chunk):
            tunnelTransfer(from: id, tunnelID: tunnelID, sizeOrContinuation: size, chunk: chunk, actions: &actions)
        case .tunnelClose(let tunnelID):
            tunnelClose(from: id, tunnelID: tunnelID, actions: &actions)
        case .hbroadcast, .hrequest, .hreply, .hpublish, .survey:
            guard connections[id]!.dialect >= .skein2 else {
                violation(id, "protocol violation: unknown opcode 0x\(String(frame.opcode.rawValue, radix: 16))", actions: &actions)
                return
            }
            switch frame {
            case .hbroadcast(let cluster, let headers, let message):
                broadcast(from: id, cluster: cluster, message: message, headers: headers, actions: &actions)
            case .hrequest(let requestID, let cluster, let headers, let body, let timeout):
                request(from: id, id: requestID, cluster: cluster, body: body, headers: headers, timeoutMillis: timeout, now: now, actions: &actions)
            case .hreply(let requestID, let headers, let outcome):
                reply(from: id, id: requestID, outcome: outcome, headers: headers, actions: &actions)
            case .hpublish(let topic, let headers, let event):
                guard checkPublishable(id, topic: topic, actions: &actions) else { return }
                publish(from: id, topic: topic, event: event, headers: headers, actions: &actions)
            case .survey(let surveyID, let cluster, let headers, let body, let timeout):
                survey(from: id, id: surveyID, cluster: cluster, body: body, headers: headers, timeoutMillis: timeout, now: now, actions: &actions)
            default:
                break
            }
        }
    }

    @inline(__always)
    private static func phase(of connection: inout Connection?) -> Phase? { connection?.phase }

    @inline(__always)
    private static func dialect(of connection: inout Connection?) -> ProtocolDialect { connection?.dialect ?? .iris }

    /// Every change of a connection's phase to closed goes through here, so `lastOpen` is never
    /// a closed (or gone) connection.
    mutating func markClosed(_ id: ConnectionID) {
        connections[id]?.phase = .closed
        lastOpen = nil
    }

    // MARK: - Time

    /// Fires every timer due at `now`: handshake timeouts, request deadlines, tunnel builds,
    /// slow consumers. Entries whose subject is gone are discarded lazily.
    public mutating func expireTimers(now: NIODeadline, actions: inout [RelayAction]) {
        while let first = timers.min, first.deadline <= now {
            timers.removeMin()
            switch first.timer {
            case .handshake(let id):
                if connections[id]?.phase == .awaitingInit {
                    reject(id, "no INIT within \(settings.handshakeTimeout.nanoseconds / 1_000_000) ms", actions: &actions)
                }
            case .request(let key):
                expireRequest(key, now: now, actions: &actions)
            case .survey(let key):
                expireSurvey(key, actions: &actions)
            case .build(let key):
                expireBuild(key, actions: &actions)
            case .slowConsumer(let id, let since):
                if let conn = connections[id], !conn.writable, conn.blockedSince == since {
                    let reason = "slow consumer: output blocked for more than \(settings.slowConsumerTimeout.nanoseconds / 1_000_000) ms"
                    actions.append(.report(.slowConsumer(id, reason: reason)))
                    closeWithReason(
                        id,
                        reason,
                        actions: &actions
                    )
                }
            case .holdLease(let key, let until):
                if let paused = holds.expire(key, until: until) { resume(paused, heldBy: key, actions: &actions) }
            case .refreshHolds:
                refreshHolds(now: now, actions: &actions)
            }
        }
    }

    // MARK: - Handshake

    private mutating func handshake(
        _ id: ConnectionID, magic: String, version: String, cluster: String, now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard magic == RelayProtocol.clientMagic else {
            reject(id, "wrong magic \(magic.debugDescription)", actions: &actions)
            return
        }
        guard let dialect = ProtocolDialect(version: version) else {
            let reason = "Unsupported protocol. Client: \(version). Relay: \(RelayProtocol.irisVersion), \(RelayProtocol.skeinVersion), \(RelayProtocol.skein2Version)."
            actions.append(.send(id, .deny(magic: RelayProtocol.relayMagic, reason: reason)))
            actions.append(.disconnect(id))
            markClosed(id)
            actions.append(.report(.handshakeRejected(id, reason: reason)))
            return
        }
        connections[id]!.phase = .open
        connections[id]!.dialect = dialect
        actions.append(.send(id, .initialize(magic: RelayProtocol.relayMagic, version: dialect.version)))
        actions.append(.report(.handshakeCompleted(id, cluster: cluster)))
        if !cluster.isEmpty {
            connections[id]!.cluster = cluster
            clusters[cluster, default: ClusterDirectory()].add(id)
            directoryVersion &+= 1
            dispatchWaiting(cluster: cluster, now: now, actions: &actions)
        }
    }

    /// Closes a connection that never became a protocol peer: no CLOSE frame, just the socket.
    private mutating func reject(_ id: ConnectionID, _ reason: String, actions: inout [RelayAction]) {
        markClosed(id)
        actions.append(.report(.handshakeRejected(id, reason: reason)))
        actions.append(.disconnect(id))
    }

    mutating func violation(_ id: ConnectionID, _ reason: String, actions: inout [RelayAction]) {
        guard let conn = connections[id], conn.phase != .closed else { return }
        if conn.phase == .awaitingInit {
            reject(id, reason, actions: &actions)
            return
        }
        actions.append(.report(.protocolViolation(id, reason: reason)))
        closeWithReason(id, reason, actions: &actions)
    }

    /// Ends an open connection from the relay's side: CLOSE with a reason, then the socket.
    mutating func closeWithReason(_ id: ConnectionID, _ reason: String, actions: inout [RelayAction]) {
        guard let conn = connections[id], conn.phase != .closed else { return }
        detach(id, reason: reason == "" ? "remote connection closed" : "remote connection closed: \(reason)", actions: &actions)
        if conn.phase == .open {
            actions.append(.send(id, .close(reason: reason)))
        }
        markClosed(id)
        actions.append(.disconnect(id))
    }

    /// Removes a connection from every table: cluster, topics, requests, builds, tunnels,
    /// and backpressure links. Its record stays until the socket closes.
    private mutating func detach(_ id: ConnectionID, reason: String, actions: inout [RelayAction]) {
        guard var conn = connections[id], !conn.detached else { return }
        conn.detached = true
        connections[id] = conn
        // It receives nothing more: the holds it asked for end now, not when its socket goes.
        if holds.hasAsked { release(holds.receiverDone(id), actions: &actions) }
        if let cluster = conn.cluster {
            clusters[cluster]?.remove(id)
            if clusters[cluster]?.members.isEmpty == true { clusters[cluster] = nil }
            directoryVersion &+= 1
        }
        if !topics.removeAll(of: id).isEmpty { directoryVersion &+= 1 }
        // Requests this connection made: forget them; their members' late replies are dropped.
        for key in conn.outgoing {
            guard let request = requests.remove(key) else {
                surveyCallerGone(key)
                continue
            }
            switch request.stage {
            case .handedOver(let member, let memberRequestID):
                connections[member]?.assigned[memberRequestID] = nil
            case .forwarded, .inDoubt:
                break
            case .waiting, .lost:
                requests.prune(request.cluster)
            }
        }
        // Requests handed to this member stay pending: at most once means they are never
        // re-sent, so the caller gets its timeout at the deadline. A relay that forwarded one
        // is told at once ("member lost"); it, too, answers its caller at the deadline.
        // A `skein/1` caller hears "member lost" at once (Docs/skein-1.md).
        for (_, key) in conn.assigned {
            guard let request = requests[key] else { continue }
            if case .relay(let origin) = request.caller {
                requests.remove(key)
                actions.append(.sendPeer(origin, .reply(id: request.callerRequestID, outcome: .memberLost)))
            } else if request.failFast && !closingAll {
                requests.remove(key)
                answer(request, key: key, .memberLost, actions: &actions)
            } else {
                requests.move(key, to: .lost)
            }
        }
        if !conn.surveyed.isEmpty { surveyedMemberGone(id, surveyed: conn.surveyed, actions: &actions) }
        for (_, key) in conn.memberBuilds {
            // The member never confirmed: the initiator's build fails now, not at its deadline.
            if let build = builds.removeValue(forKey: key) {
                failBuild(build, key: key, failure: .memberLost, detail: "the member left before confirming", actions: &actions)
            }
        }
        for (_, slot) in conn.tunnelIDs {
            switch slot {
            case .building(let key):
                if let build = builds.removeValue(forKey: key) {
                    if let member = build.member {
                        connections[member.id]?.memberBuilds[member.buildID] = nil
                    } else {
                        pruneWaitingBuilds(cluster: build.cluster)
                    }
                }
            case .open(let key):
                dropTunnel(key, closedBy: .local(id), reason: reason, actions: &actions)
            }
        }
        for destination in conn.blockedBy {
            connections[destination]?.blockedSources.remove(id)
        }
        for relay in conn.blockedByRelays {
            blockedRelays[relay]?.remove(id)
        }
        for source in conn.blockedSources {
            unblock(source, from: id, actions: &actions)
        }
    }

    // MARK: - Timers

    enum TimerKind: Equatable {
        case handshake(ConnectionID)
        case request(UInt64)
        case survey(UInt64)
        case build(UInt64)
        case slowConsumer(ConnectionID, since: NIODeadline)
        /// The lease of a hold granted to another relay ends (unless refreshed since).
        case holdLease(HoldKey, until: NIODeadline)
        /// Holds asked of other relays are due for a refresh.
        case refreshHolds
    }

    struct TimerEntry: Comparable {
        var deadline: NIODeadline
        var sequence: UInt64
        var timer: TimerKind
        static func < (a: Self, b: Self) -> Bool {
            (a.deadline, a.sequence) < (b.deadline, b.sequence)
        }
        static func == (a: Self, b: Self) -> Bool { a.sequence == b.sequence }
    }

    mutating func schedule(_ timer: TimerKind, at deadline: NIODeadline) {
        nextKey &+= 1
        timers.insert(TimerEntry(deadline: deadline, sequence: nextKey, timer: timer))
        // Timers are discarded lazily, so an answered request's entry stays until its deadline:
        // with long timeouts and a high request rate those pile up (rate × timeout entries).
        // Once stale entries clearly outnumber live ones, drop them all (amortised O(1)).
        let liveBound = requests.count + surveys.count + builds.count + 2 * connections.count + holds.grantCount
        if timers.count > 2 * liveBound + 1024 {
            timers = Heap(timers.unordered.filter { isLive($0.timer) })
        }
    }

    /// Whether a timer would still do something when it fires.
    private func isLive(_ timer: TimerKind) -> Bool {
        switch timer {
        case .handshake(let id):
            connections[id]?.phase == .awaitingInit
        case .request(let key):
            requests[key] != nil
        case .survey(let key):
            surveys[key] != nil
        case .build(let key):
            builds[key] != nil
        case .slowConsumer(let id, let since):
            connections[id].map { !$0.writable && $0.blockedSince == since } ?? false
        case .holdLease(let key, let until):
            holds.isLive(key, until: until)
        case .refreshHolds:
            refreshDue != nil
        }
    }

    mutating func makeKey() -> UInt64 {
        nextKey &+= 1
        return nextKey
    }

    /// A client-supplied millisecond timeout as a deadline, clamped to `maxTimeout`.
    func deadline(now: NIODeadline, millis: UInt64) -> NIODeadline {
        let maxMillis = UInt64(settings.maxTimeout.nanoseconds / 1_000_000)
        return now + .milliseconds(Int64(min(millis, maxMillis)))
    }

    // MARK: - Backpressure

    /// Records that `source` just sent to `destination`; if the destination's output is above
    /// its high-water mark, stop reading from the source until it drains.
    mutating func noteDelivery(from source: ConnectionID, to destination: ConnectionID, actions: inout [RelayAction]) {
        guard source != destination, connections[destination]?.writable == false else { return }
        guard connections[destination]!.blockedSources.insert(source).inserted else { return }
        guard var src = connections[source] else { return }
        let wasReading = src.isReading
        src.blockedBy.insert(destination)
        connections[source] = src
        if wasReading { actions.append(.pauseReading(source)) }
    }

    private mutating func unblock(_ source: ConnectionID, from destination: ConnectionID, actions: inout [RelayAction]) {
        guard var src = connections[source], src.blockedBy.remove(destination) != nil else { return }
        connections[source] = src
        if src.isReading && src.phase != .closed { actions.append(.resumeReading(source)) }
    }

    /// Stops reading from a connection that has reached `maxPendingRequests`.
    mutating func pauseIfAtLimit(_ id: ConnectionID, actions: inout [RelayAction]) {
        guard var conn = connections[id], !conn.atRequestLimit,
            conn.outgoing.count >= settings.maxPendingRequests
        else { return }
        let wasReading = conn.isReading
        conn.atRequestLimit = true
        connections[id] = conn
        if wasReading { actions.append(.pauseReading(id)) }
    }

    mutating func resumeIfBelowLimit(_ id: ConnectionID, actions: inout [RelayAction]) {
        guard var conn = connections[id], conn.atRequestLimit,
            conn.outgoing.count < settings.maxPendingRequests
        else { return }
        conn.atRequestLimit = false
        connections[id] = conn
        if conn.isReading && conn.phase != .closed { actions.append(.resumeReading(id)) }
    }
}

// MARK: - State records

extension RelayCore {
    enum Phase: Equatable {
        case awaitingInit
        case open
        case closed
    }

    enum TunnelSlot: Equatable {
        case building(UInt64)
        case open(UInt64)
    }

    struct Connection {
        var phase: Phase = .awaitingInit
        /// The protocol version agreed in INIT.
        var dialect: ProtocolDialect = .iris
        var detached = false
        /// The cluster this connection is a member of, if any.
        var cluster: String?
        /// Keys of requests, surveys and tunnel builds this connection started and that are unanswered.
        var outgoing: Set<UInt64> = []
        /// Requests handed to this member: the relay's request id on this connection → key.
        var assigned: [UInt64: UInt64] = [:]
        /// Surveys asked of this member: the relay's request id on this connection → survey key
        /// (ids from the same counter as `assigned`).
        var surveyed: [UInt64: UInt64] = [:]
        var nextAssignedID: UInt64 = 0
        /// Tunnel builds offered to this member: build id → key.
        var memberBuilds: [UInt64: UInt64] = [:]
        var nextBuildID: UInt64 = 0
        /// The binding's tunnel ids on this connection.
        var tunnelIDs: [UInt64: TunnelSlot] = [:]
        var tunnelCount: Int { tunnelIDs.count }
        /// Backpressure: whether this connection's output is below its high-water mark.
        var writable = true
        var blockedSince: NIODeadline?
        /// Bytes from other relays queued for it since its output became blocked
        /// (`RelaySettings.slowConsumerBytes`).
        var queuedWhileBlocked: UInt64 = 0
        /// Connections paused because they sent to this one while it was not writable.
        var blockedSources: Set<ConnectionID> = []
        /// Destinations whose full output keeps this connection paused.
        var blockedBy: Set<ConnectionID> = []
        /// Remote relays whose full peer link keeps this connection paused.
        var blockedByRelays: Set<NodeID> = []
        /// Holds other relays asked for, on streams this connection sent to them.
        var heldBy: Set<HoldKey> = []
        var atRequestLimit = false
        var isReading: Bool { blockedBy.isEmpty && blockedByRelays.isEmpty && heldBy.isEmpty && !atRequestLimit }
    }

    /// Who is waiting for a request's answer.
    enum Caller: Equatable {
        /// A local connection.
        case local(ConnectionID)
        /// Another relay, which forwarded the request on behalf of its client.
        case relay(NodeID)
    }


    /// `sendRemote`'s answer for one `name@network`, with the versions it is valid for.
    struct RemoteSendRoute {
        /// The name as the client wrote it, `name@network`.
        var name: String
        var kind: ExportKinds
        var network: String
        var federationVersion: UInt64
        var routingVersion: UInt64
        /// The next hop and the name the frame carries there, or the refusal.
        var outcome: Result<(next: NodeID, carried: String), RemoteSendRefusal>
    }

    struct RemoteSendRefusal: Error {
        var reason: FailureReason
        var detail: String
    }

    /// What this relay, as a gateway, last asked of one link: topics and patterns.
    struct SentInterest: Equatable {
        var topics: Set<String> = []
        var patterns: Set<String> = []
        var count: Int { topics.count + patterns.count }
    }

    struct PublishRoute {
        var topic: String
        var directoryVersion: UInt64
        var routingVersion: UInt64
        var relays: [NodeID]
        var subscribers: LocalSubscribers
    }

    struct PendingBuild {
        /// Who opens the tunnel: a local connection, or a relay that forwarded the build.
        var initiator: TunnelPeer
        /// The initiator's name for the tunnel: its binding's tunnel id, or the relay's key.
        var initiatorTunnelID: UInt64
        var cluster: String
        var deadline: NIODeadline
        /// Where the build is: waiting, offered to a member here, or with a remote relay.
        var stage = Stage.waiting

        enum Stage {
            /// Waiting for a member here or a relay that serves the cluster.
            case waiting
            /// Offered to a member here, which knows it by `buildID`.
            case offered(member: ConnectionID, buildID: UInt64)
            /// With a remote relay until it answers (confirmed, refused, or "no members").
            case forwarded(to: NodeID)
        }

        /// The member it was offered to and its build id.
        var member: (id: ConnectionID, buildID: UInt64)? {
            if case .offered(let member, let buildID) = stage { (member, buildID) } else { nil }
        }

        /// The remote relay it was forwarded to, until that relay answers.
        var forwardedTo: NodeID? {
            if case .forwarded(let relay) = stage { relay } else { nil }
        }
        /// The initiator wants early, distinct failures (`skein/1`).
        var failFast = false
        /// As for requests: this relay chooses where the build goes.
        var routesHere = false
        /// The other network `cluster` is in, or nil.
        var network: String?
        /// Why the last relay that declined it did.
        var refusal: (FailureReason, String)?

        var localInitiator: ConnectionID? {
            if case .local(let id) = initiator { id } else { nil }
        }
    }
}
