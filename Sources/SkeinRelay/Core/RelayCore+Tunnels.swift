import DequeModule
import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinWire

/// Who is at one end of a tunnel, as this relay sees it.
enum TunnelPeer: Equatable {
    /// A local connection; the end's `tunnelID` is its binding's tunnel id.
    case local(ConnectionID)
    /// Another relay, which holds the real end; the end's `tunnelID` is that relay's key for
    /// the tunnel, which every frame sent to it carries.
    case relay(NodeID)
}

/// One side of a tunnel as the relay sees it.
struct TunnelEnd {
    var peer: TunnelPeer
    var tunnelID: UInt64
    /// Bytes the relay may still send to this end (raised by its ALLOW, or its relay's ALLOWANCE).
    var sendAllowance: UInt64 = 0
    /// Bytes this end may still send to the relay (the relay's unreturned grant).
    var receiveAllowance: UInt64
    /// Chunks from the other side waiting for `sendAllowance`; never more than the other
    /// side's grant, so at most `tunnelBuffer` bytes.
    var queue: Deque<(sizeOrContinuation: UInt64, chunk: ByteBuffer)> = []
    var state: State = .open

    enum State: Equatable {
        case open
        /// The other side closed gracefully: deliver the queue, then close this side.
        case closingAfterDrain
        case closed
    }

    /// This end still has the tunnel open (it may be closing after its queue).
    var isOpen: Bool { state != .closed }
}

/// The two sides of a tunnel.
enum TunnelSide: Equatable {
    /// The end that asked for the tunnel.
    case initiator
    /// The member that accepted it.
    case member

    var other: TunnelSide {
        switch self {
        case .initiator: .member
        case .member: .initiator
        }
    }
}

struct Tunnel {
    var initiator: TunnelEnd
    /// The member's end (either end may be another relay).
    var member: TunnelEnd

    subscript(side: TunnelSide) -> TunnelEnd {
        get {
            switch side {
            case .initiator: initiator
            case .member: member
            }
        }
        // In place, not get-then-set: a copy of an end would share its queue's storage, and
        // the first append to it would copy the whole queue.
        _modify {
            switch side {
            case .initiator: yield &initiator
            case .member: yield &member
            }
        }
    }

    var ends: [TunnelEnd] { [initiator, member] }

    /// The side held by `peer` under `tunnelID` (a client can be both ends, under two ids);
    /// nil for a peer that holds neither.
    func side(of peer: TunnelPeer, tunnelID: UInt64) -> TunnelSide? {
        if initiator.peer == peer && initiator.tunnelID == tunnelID { return .initiator }
        if member.peer == peer && member.tunnelID == tunnelID { return .member }
        return nil
    }

    /// The side held by `relay`, if any.
    func side(ofRelay relay: NodeID) -> TunnelSide? {
        if initiator.peer == .relay(relay) { return .initiator }
        if member.peer == .relay(relay) { return .member }
        return nil
    }
}

// Tunnels: build (here or through another relay), allowance in both directions end to end,
// ordered chunk forwarding, close. Across relays every hop holds at most `tunnelBuffer` bytes
// per direction: a relay forwards to the next hop only within the allowance that hop granted,
// and returns allowance to the previous hop only as chunks leave (Docs/mesh.md, "Tunnels").
extension RelayCore {
    mutating func tunnelInit(
        from initiator: ConnectionID, tunnelID: UInt64, cluster: String, timeoutMillis: UInt64,
        now: NIODeadline, actions: inout [RelayAction]
    ) {
        let conn = connections[initiator]!
        guard conn.tunnelIDs[tunnelID] == nil else {
            violation(initiator, "protocol violation: tunnel id \(tunnelID) already in use", actions: &actions)
            return
        }
        guard conn.tunnelCount < settings.maxTunnelsPerConnection else {
            violation(initiator, "too many tunnels: the limit is \(settings.maxTunnelsPerConnection) per connection", actions: &actions)
            return
        }
        if timeoutMillis == 0 {
            actions.append(.send(initiator, .tunnelConfirm(tunnelID: tunnelID, outcome: .timedOut)))
            return
        }
        let key = makeKey()
        let deadline = deadline(now: now, millis: timeoutMillis)
        var build = PendingBuild(initiator: .local(initiator), initiatorTunnelID: tunnelID, cluster: cluster, deadline: deadline)
        build.failFast = conn.dialect.hasFailureFrames
        build.routesHere = true
        let remote = FederatedName.isRemote(cluster, localNetwork: network) ? FederatedName(cluster, localNetwork: network) : nil
        build.network = remote?.network
        builds[key] = build
        connections[initiator]!.tunnelIDs[tunnelID] = .building(key)
        connections[initiator]!.outgoing.insert(key)
        schedule(.build(key), at: deadline)
        if let remote, let (reason, detail) = exportRefusal(.tunnel, remote) {
            builds[key] = nil
            failBuild(build, key: key, failure: reason, detail: detail, actions: &actions)
        } else if !dispatchBuild(key, now: now, actions: &actions) {
            waitForBuildMember(key, actions: &actions)
        }
        pauseIfAtLimit(initiator, actions: &actions)
    }

    /// Sends a pending build to a member here, or (for a local initiator) to a remote relay
    /// serving the cluster; false when neither exists.
    mutating func dispatchBuild(_ key: UInt64, excluding: Set<NodeID> = [], now: NIODeadline, actions: inout [RelayAction]) -> Bool {
        guard let build = builds[key], build.deadline > now else { return false }
        if let target = build.network {
            return dispatchRemoteBuild(key, to: target, excluding: excluding, now: now, actions: &actions)
        }
        let hasLocal = clusters[build.cluster] != nil
        if !build.routesHere || (hasLocal && settings.routing.preferLocal) {
            return offerBuild(key, now: now, actions: &actions)
        }
        let inFlight = requests.inFlight
        if let relay = routing.pick(cluster: build.cluster, excluding: excluding, inFlight: { inFlight[$0, default: 0] }) {
            builds[key]!.stage = .forwarded(to: relay)
            let flags: PeerRequestFlags = build.failFast ? .failFast : []
            actions.append(.sendPeer(relay, .tunnelOpen(id: key, cluster: build.cluster, remainingMillis: remainingMillis(build.deadline, now), flags: flags)))
            return true
        }
        return hasLocal && offerBuild(key, now: now, actions: &actions)
    }

    /// A build no member or relay can take now: it waits until its deadline, or (`skein/1`)
    /// fails at once with "no members".
    mutating func waitForBuildMember(_ key: UInt64, excluding declined: Set<NodeID> = [], actions: inout [RelayAction]) {
        guard let build = builds[key] else { return }
        let fallback: (FailureReason, String)
        let known: Bool
        if let target = build.network {
            fallback = (.networkUnreachable, Self.unreachable(target))
            known = routing.knowsGateway(to: target, excluding: declined)
        } else {
            fallback = (.noMembers, build.cluster)
            known = clusters[build.cluster] != nil || routing.knowsServer(of: build.cluster, excluding: declined)
        }
        if !build.routesHere || (build.failFast && !known) {
            builds[key] = nil
            pruneWaitingBuilds(cluster: build.cluster)
            let (reason, detail) = build.refusal ?? fallback
            failBuild(build, key: key, failure: reason, detail: detail, actions: &actions)
        } else {
            waitingBuilds.append(key, cluster: build.cluster)
        }
    }

    /// Offers a pending build to a member of its cluster here; false when the cluster has none.
    mutating func offerBuild(_ key: UInt64, now: NIODeadline, actions: inout [RelayAction]) -> Bool {
        // Past its deadline (its timer has not run yet): the timer fails it, no member is asked.
        guard var build = builds[key], build.deadline > now, let member = pickMember(of: build.cluster) else { return false }
        let buildID = connections[member]!.nextBuildID
        connections[member]!.nextBuildID += 1
        connections[member]!.memberBuilds[buildID] = key
        build.stage = .offered(member: member, buildID: buildID)
        builds[key] = build
        actions.append(.send(member, .tunnelInit(buildID: buildID, chunkLimit: settings.effectiveChunkLimit)))
        return true
    }

    mutating func tunnelConfirm(from member: ConnectionID, buildID: UInt64, tunnelID: UInt64, actions: inout [RelayAction]) {
        guard connections[member]!.tunnelIDs[tunnelID] == nil else {
            violation(member, "protocol violation: tunnel id \(tunnelID) already in use", actions: &actions)
            return
        }
        guard let key = connections[member]!.memberBuilds.removeValue(forKey: buildID),
            let build = builds.removeValue(forKey: key)
        else {
            // The build timed out or its initiator left: the member's new tunnel is dead at birth.
            actions.append(.send(member, .tunnelClose(tunnelID: tunnelID, reason: "tunnel build timed out or was abandoned")))
            return
        }
        connections[member]!.tunnelIDs[tunnelID] = .open(key)
        open(build, key: key, far: .local(member), farID: tunnelID, actions: &actions)
    }

    /// A build was accepted by `far` (a member here, or the next relay on the way, which knows
    /// the tunnel as `farID`): the tunnel opens, the initiator hears it is built, and each side
    /// is granted this relay's tunnel buffer.
    private mutating func open(_ build: PendingBuild, key: UInt64, far: TunnelPeer, farID: UInt64, actions: inout [RelayAction]) {
        let buffer = settings.tunnelBuffer
        tunnels[key] = Tunnel(
            initiator: TunnelEnd(peer: build.initiator, tunnelID: build.initiatorTunnelID, receiveAllowance: buffer),
            member: TunnelEnd(peer: far, tunnelID: farID, receiveAllowance: buffer))
        switch far {
        case .local(let member): actions.append(.send(member, .tunnelAllow(tunnelID: farID, bytes: buffer)))
        case .relay(let relay): actions.append(.sendPeer(relay, .tunnelAllowance(id: farID, bytes: buffer)))
        }
        switch build.initiator {
        case .local(let initiator):
            connections[initiator]!.outgoing.remove(key)
            connections[initiator]!.tunnelIDs[build.initiatorTunnelID] = .open(key)
            actions.append(
                .send(initiator, .tunnelConfirm(tunnelID: build.initiatorTunnelID, outcome: .built(chunkLimit: settings.effectiveChunkLimit))))
            actions.append(.send(initiator, .tunnelAllow(tunnelID: build.initiatorTunnelID, bytes: buffer)))
            resumeIfBelowLimit(initiator, actions: &actions)
        case .relay(let origin):
            actions.append(.sendPeer(origin, .tunnelConfirm(id: build.initiatorTunnelID, outcome: .built(farID: key, chunkLimit: settings.effectiveChunkLimit))))
            actions.append(.sendPeer(origin, .tunnelAllowance(id: build.initiatorTunnelID, bytes: buffer)))
        }
    }

    mutating func expireBuild(_ key: UInt64, actions: inout [RelayAction]) {
        guard let build = builds.removeValue(forKey: key) else { return }
        if let member = build.member { connections[member.id]?.memberBuilds[member.buildID] = nil }
        pruneWaitingBuilds(cluster: build.cluster)
        failBuild(build, key: key, failure: nil, detail: "timed out", actions: &actions)
    }

    /// Tells a build's initiator that it failed: a local `v1.0-draft2` binding hears TUNNEL
    /// CONFIRM timedOut (the only failure that protocol has), a `skein/1` one TUNNEL FAILED with
    /// `failure` when there is one, and a relay hears the reason.
    mutating func failBuild(_ build: PendingBuild, key: UInt64, failure: FailureReason?, detail: String, actions: inout [RelayAction]) {
        switch build.initiator {
        case .local(let initiator):
            connections[initiator]?.tunnelIDs[build.initiatorTunnelID] = nil
            connections[initiator]?.outgoing.remove(key)
            if let failure, connections[initiator]?.dialect.hasFailureFrames == true {
                actions.append(.send(initiator, .tunnelFailed(tunnelID: build.initiatorTunnelID, reason: failure, detail: detail)))
            } else {
                actions.append(.send(initiator, .tunnelConfirm(tunnelID: build.initiatorTunnelID, outcome: .timedOut)))
            }
            resumeIfBelowLimit(initiator, actions: &actions)
        case .relay(let origin):
            actions.append(.sendPeer(origin, .tunnelConfirm(id: build.initiatorTunnelID, outcome: failure.map { .refused($0, detail) } ?? .failed(detail))))
        }
    }

    /// Like `pruneWaitingRequests`, for tunnel builds waiting for a member.
    mutating func pruneWaitingBuilds(cluster: String) {
        let builds = self.builds
        waitingBuilds.prune(cluster) { builds[$0] != nil }
    }

    mutating func tunnelAllow(from id: ConnectionID, tunnelID: UInt64, bytes: UInt64, actions: inout [RelayAction]) {
        // ALLOW for a tunnel that is closing or closed is a harmless race: ignored.
        guard case .open(let key)? = connections[id]!.tunnelIDs[tunnelID], let side = tunnels[key]?.side(of: .local(id), tunnelID: tunnelID)
        else { return }
        allow(key, side: side, bytes: bytes, actions: &actions)
    }

    private mutating func allow(_ key: UInt64, side: TunnelSide, bytes: UInt64, actions: inout [RelayAction]) {
        guard var tunnel = tunnels[key] else { return }
        let (sum, overflow) = tunnel[side].sendAllowance.addingReportingOverflow(bytes)
        tunnel[side].sendAllowance = overflow ? .max : sum
        tunnels[key] = tunnel
        drain(key, side: side, actions: &actions)
    }

    mutating func tunnelTransfer(
        from id: ConnectionID, tunnelID: UInt64, sizeOrContinuation: UInt64, chunk: ByteBuffer, actions: inout [RelayAction]
    ) {
        let chunkSize = UInt64(chunk.readableBytes)
        guard chunkSize <= settings.effectiveChunkLimit else {
            violation(id, "protocol violation: tunnel chunk of \(chunkSize) bytes exceeds the chunk limit of \(settings.effectiveChunkLimit)", actions: &actions)
            return
        }
        // A tunnel message may be of any size the length field carries: the relay forwards its
        // chunks and never assembles it, so only the chunk and the allowance bound its memory.
        switch connections[id]!.tunnelIDs[tunnelID] {
        case nil:
            return  // Data racing a close: dropped.
        case .building:
            violation(id, "protocol violation: transfer on tunnel \(tunnelID) before it was built", actions: &actions)
            return
        case .open(let key):
            guard let tunnel = tunnels[key], let side = tunnel.side(of: .local(id), tunnelID: tunnelID) else { return }
            guard chunkSize <= tunnel[side].receiveAllowance else {
                violation(
                    id,
                    "protocol violation: tunnel \(tunnelID) sent \(chunkSize) bytes with only \(tunnel[side].receiveAllowance) allowed",
                    actions: &actions)
                return
            }
            accept(key, fromSide: side, sizeOrContinuation: sizeOrContinuation, chunk: chunk, actions: &actions)
        }
    }

    /// A chunk from `side`, within its allowance: queued for the other side and forwarded as
    /// far as that side's allowance goes.
    private mutating func accept(_ key: UInt64, fromSide side: TunnelSide, sizeOrContinuation: UInt64, chunk: ByteBuffer, actions: inout [RelayAction]) {
        guard var tunnel = tunnels[key] else { return }
        tunnel[side].receiveAllowance -= UInt64(chunk.readableBytes)
        let other = side.other
        guard tunnel[other].state == .open else {
            tunnels[key] = tunnel
            return  // The other side is gone; its data has nowhere to go.
        }
        tunnel[other].queue.append((sizeOrContinuation, chunk))
        tunnels[key] = tunnel
        drain(key, side: other, actions: &actions)
    }

    /// Forwards queued chunks to `side` while its allowance lasts, returning allowance to the
    /// sender as they leave; then closes `side` if the other side closed gracefully.
    private mutating func drain(_ key: UInt64, side: TunnelSide, actions: inout [RelayAction]) {
        guard var tunnel = tunnels[key] else { return }
        var end = tunnel[side]
        var forwarded: UInt64 = 0
        while let head = end.queue.first, UInt64(head.chunk.readableBytes) <= end.sendAllowance {
            end.queue.removeFirst()
            let size = UInt64(head.chunk.readableBytes)
            end.sendAllowance -= size
            forwarded += size
            switch end.peer {
            case .local(let connection):
                actions.append(
                    .send(connection, .tunnelTransfer(tunnelID: end.tunnelID, sizeOrContinuation: head.sizeOrContinuation, chunk: head.chunk)))
            case .relay(let relay):
                actions.append(.sendPeer(relay, .tunnelData(id: end.tunnelID, sizeOrContinuation: head.sizeOrContinuation, chunk: head.chunk)))
            }
        }
        let other = side.other
        if forwarded > 0, tunnel[other].isOpen {
            tunnel[other].receiveAllowance += forwarded
            let giver = tunnel[other]
            switch giver.peer {
            case .local(let connection):
                actions.append(.send(connection, .tunnelAllow(tunnelID: giver.tunnelID, bytes: forwarded)))
            case .relay(let relay):
                actions.append(.sendPeer(relay, .tunnelAllowance(id: giver.tunnelID, bytes: forwarded)))
            }
        }
        if end.state == .closingAfterDrain && end.queue.isEmpty {
            end.state = .closed
            switch end.peer {
            case .local(let connection):
                actions.append(.send(connection, .tunnelClose(tunnelID: end.tunnelID, reason: "")))
                connections[connection]?.tunnelIDs[end.tunnelID] = nil
            case .relay(let relay):
                actions.append(.sendPeer(relay, .tunnelClose(id: end.tunnelID, reason: "")))
            }
        }
        tunnel[side] = end
        if !tunnel.initiator.isOpen && !tunnel.member.isOpen {
            tunnels[key] = nil
        } else {
            tunnels[key] = tunnel
        }
    }

    mutating func tunnelClose(from id: ConnectionID, tunnelID: UInt64, actions: inout [RelayAction]) {
        let slot = connections[id]!.tunnelIDs.removeValue(forKey: tunnelID)
        actions.append(.send(id, .tunnelClose(tunnelID: tunnelID, reason: "")))
        switch slot {
        case nil:
            return  // Already closed (a close crossing ours): the acknowledgement is all it needs.
        case .building(let key):
            if let build = builds.removeValue(forKey: key) {
                if let member = build.member { connections[member.id]?.memberBuilds[member.buildID] = nil }
                pruneWaitingBuilds(cluster: build.cluster)
                connections[id]!.outgoing.remove(key)
                resumeIfBelowLimit(id, actions: &actions)
            }
        case .open(let key):
            guard let side = tunnels[key]?.side(of: .local(id), tunnelID: tunnelID) else { return }
            closeSide(key, side: side, actions: &actions)
        }
    }

    /// One side closed gracefully: the other gets what is queued for it, then its close.
    private mutating func closeSide(_ key: UInt64, side: TunnelSide, actions: inout [RelayAction]) {
        guard var tunnel = tunnels[key] else { return }
        tunnel[side].state = .closed
        tunnel[side].queue.removeAll()
        let other = side.other
        if tunnel[other].state == .open { tunnel[other].state = .closingAfterDrain }
        tunnels[key] = tunnel
        drain(key, side: other, actions: &actions)
    }

    /// A tunnel's connection is gone: the other side fails now, with `reason`.
    mutating func dropTunnel(_ key: UInt64, closedBy peer: TunnelPeer, reason: String, actions: inout [RelayAction]) {
        guard let tunnel = tunnels.removeValue(forKey: key) else { return }
        for end in tunnel.ends where end.isOpen && end.peer != peer {
            switch end.peer {
            case .local(let connection):
                connections[connection]?.tunnelIDs[end.tunnelID] = nil
                actions.append(.send(connection, .tunnelClose(tunnelID: end.tunnelID, reason: reason)))
            case .relay(let relay):
                actions.append(.sendPeer(relay, .tunnelClose(id: end.tunnelID, reason: reason)))
            }
        }
    }

    // MARK: - From other relays

    /// Another relay forwards a build for a member here.
    mutating func remoteTunnelOpen(from relay: NodeID, id: UInt64, cluster: String, remainingMillis: UInt64, now: NIODeadline, actions: inout [RelayAction]) {
        guard remainingMillis > 0, clusters[cluster] != nil else {
            actions.append(.sendPeer(relay, .tunnelConfirm(id: id, outcome: remainingMillis > 0 ? .refused(.noMembers, cluster) : .failed("timed out"))))
            return
        }
        let key = makeKey()
        let deadline = deadline(now: now, millis: remainingMillis)
        builds[key] = PendingBuild(initiator: .relay(relay), initiatorTunnelID: id, cluster: cluster, deadline: deadline)
        schedule(.build(key), at: deadline)
        if !offerBuild(key, now: now, actions: &actions) {
            builds[key] = nil
            actions.append(.sendPeer(relay, .tunnelConfirm(id: id, outcome: .refused(.noMembers, cluster))))
        }
    }

    /// The relay a build was forwarded to answered. The initiator is a local connection, or
    /// (on a gateway, or on another network's side of one) a relay: then this relay is a hop in
    /// the middle and holds a tunnel between two relays.
    mutating func remoteTunnelConfirm(from relay: NodeID, key: UInt64, outcome: PeerTunnelOutcome, now: NIODeadline, actions: inout [RelayAction]) {
        guard let build = builds[key], build.forwardedTo == relay else {
            // Abandoned here (timed out, initiator gone): close the far end it just built.
            if case .built(let farID, _) = outcome {
                actions.append(.sendPeer(relay, .tunnelClose(id: farID, reason: "tunnel build timed out or was abandoned")))
            }
            return
        }
        switch outcome {
        case .built(let farID, _):
            builds[key] = nil
            open(build, key: key, far: .relay(relay), farID: farID, actions: &actions)
        case .refused(let reason, let detail) where reason == .noMembers || reason == .networkUnreachable:
            builds[key]!.stage = .waiting
            builds[key]!.refusal = (reason, detail)
            actions.append(.report(.requestRerouted(cluster: build.cluster, from: relay)))
            if !dispatchBuild(key, excluding: [relay], now: now, actions: &actions) {
                waitForBuildMember(key, excluding: [relay], actions: &actions)
            }
        case .refused(let reason, let detail):
            builds[key] = nil
            failBuild(build, key: key, failure: reason, detail: detail, actions: &actions)
        case .failed(let reason):
            builds[key] = nil
            failBuild(build, key: key, failure: reason == "timed out" ? nil : .memberLost, detail: reason, actions: &actions)
        }
    }

    /// Allowance, data or close for a tunnel whose other end is `relay`; `key` is this relay's.
    mutating func remoteTunnelFrame(_ frame: PeerFrame, from relay: NodeID, key: UInt64, actions: inout [RelayAction]) {
        guard let tunnel = tunnels[key], let side = tunnel.side(ofRelay: relay) else { return }
        switch frame {
        case .tunnelAllowance(_, let bytes):
            allow(key, side: side, bytes: bytes, actions: &actions)
        case .tunnelData(_, let size, let chunk):
            guard UInt64(chunk.readableBytes) <= tunnel[side].receiveAllowance else {
                // The far relay broke the flow-control contract: end the tunnel, not the link.
                dropTunnel(key, closedBy: .relay(relay), reason: "the far relay sent more than allowed", actions: &actions)
                actions.append(.sendPeer(relay, .tunnelClose(id: tunnel[side].tunnelID, reason: "sent more than allowed")))
                return
            }
            accept(key, fromSide: side, sizeOrContinuation: size, chunk: chunk, actions: &actions)
        case .tunnelClose(_, let reason):
            if reason.isEmpty {
                closeSide(key, side: side, actions: &actions)
            } else {
                dropTunnel(key, closedBy: .relay(relay), reason: reason, actions: &actions)
            }
        default:
            break
        }
    }

    /// `relay` is gone: its tunnels fail at this end, and builds forwarded to it fail or, if
    /// never sent, go elsewhere.
    mutating func dropRelayTunnels(_ relay: NodeID, neverSent: Bool, now: NIODeadline, actions: inout [RelayAction]) {
        for key in tunnels.filter({ $0.value.side(ofRelay: relay) != nil }).keys.sorted() {
            dropTunnel(key, closedBy: .relay(relay), reason: "the relay at the other end was lost", actions: &actions)
        }
        for key in builds.filter({ $0.value.forwardedTo == relay }).keys.sorted() {
            guard let build = builds[key] else { continue }
            if neverSent {
                builds[key]!.stage = .waiting
                if !dispatchBuild(key, excluding: [relay], now: now, actions: &actions) {
                    waitForBuildMember(key, actions: &actions)
                }
            } else {
                builds[key] = nil
                failBuild(build, key: key, failure: .memberLost, detail: "the relay serving the tunnel was lost", actions: &actions)
            }
        }
        for key in builds.filter({ $0.value.initiator == .relay(relay) }).keys.sorted() {
            guard let build = builds.removeValue(forKey: key) else { continue }
            if let member = build.member { connections[member.id]?.memberBuilds[member.buildID] = nil }
        }
    }
}
