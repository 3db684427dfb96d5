import HeapModule
import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinRouting
import SkeinWire

/// Everything that can happen to a relay, as its shells see it. `RelayLoop.handle` takes one
/// at a time, with the time it happened.
public enum RelayInput: Sendable {
    // MARK: Local clients
    /// A client connected (the shell assigns ids, never reused).
    case clientOpened(ConnectionID)
    /// A client sent a whole frame.
    case clientFrame(ConnectionID, ClientFrame)
    /// A client's byte stream could not be decoded.
    case clientMalformed(ConnectionID, WireError)
    /// A client's socket closed, with `unparsedBytes` of a frame left undecoded.
    case clientClosed(ConnectionID, unparsedBytes: Int)
    /// A client's output crossed its high (false) or low (true) water mark.
    case clientWritability(ConnectionID, writable: Bool)

    // MARK: Other relays of this network
    /// A frame from another relay's established link (not a membership message).
    case peerFrame(NodeID, PeerFrame)
    /// A membership message that arrived on a peer link from the relay listening at the address.
    case membershipStream([UInt8], from: MemberAddress)
    /// An opened, authenticated gossip datagram.
    case datagram([UInt8], from: MemberAddress)
    /// A link to the relay finished its handshake and HELLO.
    case peerLinkUp(NodeID)
    /// A peer link ended.
    case peerLinkDown(PeerLinkEnd)
    /// A link to the relay crossed its high (false) or low (true) water mark.
    case peerWritability(NodeID, writable: Bool)
    /// A `.sendPeer` found no established link to the relay: the loop says where to dial, or
    /// gives the relay up as never reached.
    case peerUnsent(NodeID, PeerFrame)

    // MARK: Other networks (gateways)
    /// A gateway link of another network said GATEWAY (its network and exports).
    case gatewayLinked(NodeID, network: String, exports: [ExportRule])
    /// A gateway link that had said GATEWAY ended.
    case gatewayUnlinked(NodeID)
    /// A frame from another network's gateway, after its GATEWAY.
    case gatewayFrame(NodeID, PeerFrame)

    // MARK: Time and the operator
    /// The timer armed at `nextDeadline` fired (or any time: nothing not due is done).
    case timer
    /// Join the mesh through these relays (at start, or `skein join`).
    case join([MemberAddress])
    /// Leave the mesh gracefully: others hear "left", never "dead".
    case leave
    /// Shutdown, first step: requests in flight may finish until `until`; the loop reports
    /// `.drained` when none is left or the time is up.
    case drain(until: NIODeadline)
    /// End every client connection with a reason (shutdown); the loop reports `.allClosed`
    /// when the last is gone.
    case closeAll(reason: String)
}

/// How a peer link ended, as its shell saw it.
public enum PeerLinkEnd: Sendable, Equatable {
    /// A goodbye either way (idle, duplicate, key retired, leaving): nothing was lost.
    case graceful
    /// An established link to the relay broke.
    case broken(NodeID)
    /// A dial to the address never got through (`refused`: ECONNREFUSED, nothing listens there).
    case dialFailed(MemberAddress, refused: Bool)

    /// What a link's end means to the loop: a goodbye is no failure; a link that carried the
    /// relay's traffic (it said HELLO) broke; a dial that never got that far failed. Nil for an
    /// accepted connection that ended before it was either (a failed handshake).
    public init?(closure: PeerLinkClosure, saidHello: Bool, dialed: MemberAddress?) {
        if closure.how == .goodbye {
            self = .graceful
        } else if let node = closure.peer?.node, saidHello {
            self = .broken(node)
        } else if let dialed {
            self = .dialFailed(dialed, refused: closure.how == .failed(refused: true))
        } else {
            return nil
        }
    }
}

/// What the loop needs to know about the mesh it takes part in.
public struct RelayLoopMesh: Sendable {
    public var id: NodeID
    public var name: String
    public var address: MemberAddress
    public var zone: String
    public var membership: MembershipSettings
    /// After a relay's link broke or a dial to it failed, it gets no new work for this long
    /// (then again if membership still holds it alive; the next frame dials afresh).
    public var readmitDelay: TimeAmount = .seconds(1)
    /// A change of this relay's clusters or topics is advertised this long after it, so a
    /// burst of subscriptions is one metadata update.
    public var metadataDelay: TimeAmount = .milliseconds(50)

    public init(id: NodeID, name: String, address: MemberAddress, zone: String = "", membership: MembershipSettings = .lan) {
        self.id = id
        self.name = name
        self.address = address
        self.zone = zone
        self.membership = membership
    }
}

/// The whole relay as one value: the relay core (clients, routing, federation), the membership
/// core, and the rules that join them (which relays routing may use, what this relay
/// advertises, how a lost link is read). No I/O, no clock, no randomness of its own: every
/// input carries `now`, randomness comes from the seeds it is made with, and every consequence
/// is a `RelayAction` appended to `actions` (Docs/architecture.md, "The relay loop").
///
/// Shells turn socket events into `RelayInput`s and carry out the actions; the timer they keep
/// is armed at `nextDeadline`. The mesh simulator drives many loops on virtual time
/// (`skein simulate mesh`).
public struct RelayLoop {
    public private(set) var core: RelayCore
    /// Nil for a relay on its own.
    public private(set) var membership: Membership?
    let mesh: RelayLoopMesh?
    /// The `core.directoryVersion` last advertised in membership metadata.
    var advertisedVersion: UInt64 = .max
    /// When the next metadata update goes out, once the directory changed.
    var metadataDue: NIODeadline?
    /// Relays out of routing after a link failure, and when they may come back.
    var readmissions = Heap<Readmission>()
    var left = false
    /// Where the relay is in its shutdown.
    var shutdown = Shutdown.serving

    enum Shutdown: Equatable {
        case serving
        /// Waiting for the requests in flight, until the deadline.
        case draining(until: NIODeadline)
        /// `.drained` reported.
        case drained
        /// Every connection was told to close; waiting for them to go.
        case closing
        /// `.allClosed` reported.
        case closed
    }

    struct Readmission: Comparable {
        var at: NIODeadline
        var node: NodeID
        static func < (a: Self, b: Self) -> Bool { (a.at, a.node) < (b.at, b.node) }
    }

    /// A relay on its own (no mesh).
    public init(core: RelayCore) {
        self.core = core
        self.membership = nil
        self.mesh = nil
    }

    /// A relay in a mesh. `generation` orders successive processes at one address (the shell
    /// passes its wall-clock start in milliseconds).
    public init(core: RelayCore, mesh: RelayLoopMesh, seed: UInt64, now: NIODeadline, generation: UInt64) throws(MembershipError) {
        var core = core
        core.localNode = mesh.id
        self.core = core
        self.mesh = mesh
        self.membership = try Membership(
            id: mesh.id, name: mesh.name, address: mesh.address, metadata: MemberMetadata(zone: mesh.zone),
            settings: mesh.membership, seed: seed, now: now, generation: generation)
    }

    /// The earliest time at which `.timer` has work.
    public var nextDeadline: NIODeadline? {
        var next = core.nextDeadline
        if let membership, !left {
            let wakeup = membership.nextWakeup
            if wakeup != .distantFuture { next = min(next ?? wakeup, wakeup) }
            if let due = metadataDue { next = min(next ?? due, due) }
            if let first = readmissions.min { next = min(next ?? first.at, first.at) }
        }
        if case .draining(let until) = shutdown { next = min(next ?? until, until) }
        return next
    }

    /// Whether the relay left the mesh (or never was in one).
    public var hasLeft: Bool { left }

    // MARK: - Inputs

    public mutating func handle(_ input: RelayInput, now: NIODeadline, actions: inout [RelayAction]) {
        switch input {
        case .clientFrame(let id, let frame):
            received(frame, from: id, now: now, actions: &actions)
            return
        case .peerFrame(let node, let frame):
            receivedPeer(frame, from: node, now: now, actions: &actions)
            return
        case .gatewayFrame(let node, let frame):
            core.receivedFromGateway(frame, from: node, now: now, actions: &actions)
        case .clientOpened(let id):
            core.connectionOpened(id, now: now, actions: &actions)
        case .clientMalformed(let id, let error):
            core.malformedInput(id, error: error, actions: &actions)
        case .clientClosed(let id, let unparsed):
            if unparsed > 0 { core.truncatedInput(id, bufferedBytes: unparsed, actions: &actions) }
            core.connectionClosed(id, now: now, actions: &actions)
        case .clientWritability(let id, let writable):
            core.writabilityChanged(id, writable: writable, now: now, actions: &actions)
        case .peerWritability(let node, let writable):
            core.relayWritabilityChanged(node, writable: writable, actions: &actions)
        case .peerUnsent(let node, let frame):
            peerUnsent(node, frame, now: now, actions: &actions)
        case .membershipStream(let bytes, let from):
            guard !left else { break }
            membershipDid({ $0.receiveStream(bytes, from: from, now: now) }, now: now, actions: &actions)
        case .datagram(let bytes, let from):
            guard !left else { break }
            membershipDid({ $0.receiveDatagram(bytes, from: from, now: now) }, now: now, actions: &actions)
        case .peerLinkUp(let node):
            // A handshake proved the peer runs: evidence for a relay held dead.
            guard !left else { break }
            membershipDid({ $0.linkEstablished(node, now: now) }, now: now, actions: &actions)
        case .peerLinkDown(let end):
            peerLinkDown(end, now: now, actions: &actions)
        case .gatewayLinked(let node, let network, let exports):
            core.gatewayLinked(node, network: network, exports: exports, now: now, actions: &actions)
        case .gatewayUnlinked(let node):
            // Even a goodbye ends what the link carried: nothing sent on it can be answered now.
            core.gatewayUnlinked(node, loss: .linkBroken, now: now, actions: &actions)
        case .timer:
            fireTimers(now: now, actions: &actions)
        case .join(let seeds):
            guard !left else { break }
            // The first metadata goes out at once (a gateway advertises its networks).
            if advertisedVersion == .max { metadataDue = now }
            membershipDid({ $0.join(seeds: seeds, now: now) }, now: now, actions: &actions)
        case .leave:
            guard !left, membership != nil else { break }
            membershipDid({ $0.leave(now: now) }, now: now, actions: &actions)
            left = true
            metadataDue = nil
        case .drain(let until):
            if shutdown == .serving {
                shutdown = .draining(until: until)
            } else {
                // Already drained (or closing): the answer is now.
                actions.append(.report(.drained(unanswered: core.pendingRequestCount + core.surveyCount)))
            }
        case .closeAll(let reason):
            core.closeAll(reason: reason, actions: &actions)
            shutdown = .closing
        }
        noteDirectoryChange(now: now)
        noteShutdown(now: now, actions: &actions)
    }

    /// `handle(.clientFrame(id, frame))`, for the hot path: the same, without building the input.
    @inline(__always)
    public mutating func received(_ frame: ClientFrame, from id: ConnectionID, now: NIODeadline, actions: inout [RelayAction]) {
        core.received(frame, from: id, now: now, actions: &actions)
        noteDirectoryChange(now: now)
        noteShutdown(now: now, actions: &actions)
    }

    /// `handle(.peerFrame(node, frame))`, for the hot path.
    @inline(__always)
    public mutating func receivedPeer(_ frame: PeerFrame, from node: NodeID, now: NIODeadline, actions: inout [RelayAction]) {
        core.receivedPeer(frame, from: node, now: now, actions: &actions)
        noteDirectoryChange(now: now)
        noteShutdown(now: now, actions: &actions)
    }

    /// During shutdown, after every input: is the step the shell waits for done?
    @inline(__always)
    mutating func noteShutdown(now: NIODeadline, actions: inout [RelayAction]) {
        if case .serving = shutdown { return }
        switch shutdown {
        case .draining(let until) where (core.pendingRequestCount == 0 && core.surveyCount == 0) || now >= until:
            shutdown = .drained
            actions.append(.report(.drained(unanswered: core.pendingRequestCount + core.surveyCount)))
        case .closing where core.connectionCount == 0:
            shutdown = .closed
            actions.append(.report(.allClosed))
        default:
            break
        }
    }

    /// What local connections serve changed: advertise it shortly (one compare per input).
    @inline(__always)
    mutating func noteDirectoryChange(now: NIODeadline) {
        if core.directoryVersion != advertisedVersion, metadataDue == nil, membership != nil, !left, advertisedVersion != .max {
            metadataDue = now + mesh!.metadataDelay
        }
    }

    // MARK: - Timers

    mutating func fireTimers(now: NIODeadline, actions: inout [RelayAction]) {
        core.expireTimers(now: now, actions: &actions)
        guard membership != nil, !left else { return }
        if membership!.nextWakeup <= now {
            membershipDid({ $0.tick(now: now) }, now: now, actions: &actions)
        }
        while let first = readmissions.min, first.at <= now {
            readmissions.removeMin()
            // Back into routing if membership still says it is alive (the next frame dials again).
            if let member = membership?.member(first.node) { routingChanged(member, now: now, actions: &actions) }
        }
        if let due = metadataDue, due <= now {
            metadataDue = nil
            advertise(now: now, actions: &actions)
        }
    }

    mutating func advertise(now: NIODeadline, actions: inout [RelayAction]) {
        guard let mesh else { return }
        let version = core.directoryVersion
        let metadata = MemberMetadata(
            zone: mesh.zone,
            clusters: core.clusterMembership.mapValues { UInt32(clamping: $0) },
            topics: Set(core.topicSubscriptions.keys),
            load: UInt32(clamping: core.connectionCount),
            gateways: core.gatewayAdvertisement,
            patterns: core.advertisedPatterns)
        do {
            let directives = try membership!.updateMetadata(metadata, now: now)
            advertisedVersion = version
            perform(directives, now: now, actions: &actions)
        } catch {
            // Too many or too long names for one relay's metadata: keep the last good one, and
            // say so once per change.
            if advertisedVersion != version {
                advertisedVersion = version
                actions.append(.report(.metadataRejected(reason: "\(error)")))
            }
        }
    }

    // MARK: - Links

    mutating func peerLinkDown(_ end: PeerLinkEnd, now: NIODeadline, actions: inout [RelayAction]) {
        switch end {
        case .graceful:
            return
        case .broken(let node):
            // Routing stops using the relay until membership says it is alive again after a
            // short pause; for membership it is a hint to probe now, never a verdict.
            core.relayUnavailable(node, .linkBroken, now: now, actions: &actions)
            guard !left, membership != nil else { return }
            readmit(node, now: now)
            membershipDid({ $0.linkBroken(node, now: now) }, now: now, actions: &actions)
        case .dialFailed(let address, let refused):
            // Nothing queued on it was sent. A refused dial says the relay's process is gone
            // (strong evidence for membership).
            guard let membership, !left else { return }
            if let member = membership.members.first(where: { $0.address == address && $0.id != membership.id }) {
                core.relayUnavailable(member.id, .neverReached, now: now, actions: &actions)
                readmit(member.id, now: now)
            }
            membershipDid({ $0.streamFailed(to: address, now: now, refused: refused) }, now: now, actions: &actions)
        }
    }

    mutating func readmit(_ node: NodeID, now: NIODeadline) {
        readmissions.insert(Readmission(at: now + mesh!.readmitDelay, node: node))
    }

    mutating func peerUnsent(_ node: NodeID, _ frame: PeerFrame, now: NIODeadline, actions: inout [RelayAction]) {
        if let member = membership?.member(node), member.status != .left, member.id != membership?.id {
            actions.append(.sendPeerAt(member.address, frame))
        } else {
            // Unknown (or gone): the frame is dropped, and what it carried goes elsewhere.
            core.relayUnavailable(node, .neverReached, now: now, actions: &actions)
        }
    }

    // MARK: - Membership

    mutating func membershipDid(
        _ body: (inout Membership) -> [MembershipDirective], now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard membership != nil else { return }
        let directives = body(&membership!)
        perform(directives, now: now, actions: &actions)
    }

    mutating func perform(_ directives: [MembershipDirective], now: NIODeadline, actions: inout [RelayAction]) {
        for directive in directives {
            switch directive {
            case .sendDatagram(let bytes, let to):
                actions.append(.sendDatagram(bytes, to: to))
            case .sendStream(let bytes, let to):
                actions.append(.sendPeerAt(to, .membership(ByteBuffer(bytes: bytes))))
            case .event(let event):
                membershipEvent(event, now: now, actions: &actions)
            }
        }
    }

    mutating func membershipEvent(_ event: MembershipEvent, now: NIODeadline, actions: inout [RelayAction]) {
        actions.append(.report(.membership(event)))
        if case .statusChanged(let member, from: .dead) = event, member.status == .alive {
            // Back from the dead: its old links carried traffic into the outage and now sit in
            // TCP's backoff; replace them before routing sends anything.
            actions.append(.resetPeerLinks(member.id, reason: "the relay was held dead; a fresh link replaces this one"))
        }
        switch event {
        case .joined(let member), .statusChanged(let member, _), .metadataChanged(let member):
            routingChanged(member, now: now, actions: &actions)
        case .removed(let id):
            core.relayUnavailable(id, .dead, now: now, actions: &actions)
        case .nameConflict:
            break
        }
    }

    /// Tells the relay core what a member serves, or that it is not usable.
    mutating func routingChanged(_ member: Member, now: NIODeadline, actions: inout [RelayAction]) {
        guard member.id != membership?.id else { return }
        if member.status == .alive, let metadata = member.metadata {
            core.relayUpdated(RemoteRelay(member: member, metadata: metadata), now: now, actions: &actions)
        } else {
            // Suspect: no new work, but what is in flight stays. Dead or left: lost.
            let loss: RelayLoss = switch member.status {
            case .left: .left
            case .dead: .dead
            default: .suspect
            }
            core.relayUnavailable(member.id, loss, now: now, actions: &actions)
        }
    }
}

extension RemoteRelay {
    /// What routing needs of a member and its metadata.
    init(member: Member, metadata: MemberMetadata) {
        self.init(
            id: member.id, name: member.name, zone: metadata.zone, clusters: metadata.clusters, topics: metadata.topics,
            load: metadata.load, gateways: metadata.gateways.mapValues(ExportTable.init), patterns: metadata.patterns)
    }
}
