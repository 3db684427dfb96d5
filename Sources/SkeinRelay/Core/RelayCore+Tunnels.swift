import DequeModule
import NIOCore
import SkeinWire

/// One side of a tunnel as the relay sees it.
struct TunnelEnd {
    var connection: ConnectionID
    var tunnelID: UInt64
    /// Bytes the relay may still send to this binding (raised by the binding's ALLOW).
    var sendAllowance: UInt64 = 0
    /// Bytes this binding may still send to the relay (the relay's unreturned grant).
    var receiveAllowance: UInt64
    /// Chunks from the other side waiting for `sendAllowance`; never more than the other
    /// side's grant, so at most `tunnelBuffer` bytes.
    var queue: Deque<(sizeOrContinuation: UInt64, chunk: ByteBuffer)> = []
    /// This binding still has the tunnel open.
    var isOpen = true
    /// The other side closed gracefully: deliver the queue, then close this side.
    var closeAfterDrain = false
}

struct Tunnel {
    /// `ends[0]` is the initiator, `ends[1]` the member.
    var ends: [TunnelEnd]

    func side(of connection: ConnectionID, tunnelID: UInt64) -> Int {
        ends[0].connection == connection && ends[0].tunnelID == tunnelID ? 0 : 1
    }
}

// Tunnels: build, allowance in both directions, ordered chunk forwarding, close.
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
        builds[key] = PendingBuild(initiator: initiator, initiatorTunnelID: tunnelID, cluster: cluster, deadline: deadline)
        connections[initiator]!.tunnelIDs[tunnelID] = .building(key)
        connections[initiator]!.outgoing.insert(key)
        schedule(.build(key), at: deadline)
        if !offerBuild(key, now: now, actions: &actions) {
            waitingBuilds[cluster, default: []].append(key)
        }
        pauseIfAtLimit(initiator, actions: &actions)
    }

    /// Offers a pending build to a member of its cluster; false when the cluster has none.
    mutating func offerBuild(_ key: UInt64, now: NIODeadline, actions: inout [RelayAction]) -> Bool {
        // Past its deadline (its timer has not run yet): the timer fails it, no member is asked.
        guard var build = builds[key], build.deadline > now, let member = pickMember(of: build.cluster) else { return false }
        let buildID = connections[member]!.nextBuildID
        connections[member]!.nextBuildID += 1
        connections[member]!.memberBuilds[buildID] = key
        build.member = member
        build.memberBuildID = buildID
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
        let initiator = build.initiator
        connections[initiator]!.outgoing.remove(key)
        connections[initiator]!.tunnelIDs[build.initiatorTunnelID] = .open(key)
        connections[member]!.tunnelIDs[tunnelID] = .open(key)
        let buffer = settings.tunnelBuffer
        tunnels[key] = Tunnel(ends: [
            TunnelEnd(connection: initiator, tunnelID: build.initiatorTunnelID, receiveAllowance: buffer),
            TunnelEnd(connection: member, tunnelID: tunnelID, receiveAllowance: buffer),
        ])
        actions.append(.send(member, .tunnelAllow(tunnelID: tunnelID, bytes: buffer)))
        actions.append(
            .send(initiator, .tunnelConfirm(tunnelID: build.initiatorTunnelID, outcome: .built(chunkLimit: settings.effectiveChunkLimit))))
        actions.append(.send(initiator, .tunnelAllow(tunnelID: build.initiatorTunnelID, bytes: buffer)))
        resumeIfBelowLimit(initiator, actions: &actions)
    }

    mutating func expireBuild(_ key: UInt64, actions: inout [RelayAction]) {
        guard let build = builds.removeValue(forKey: key) else { return }
        if let member = build.member {
            connections[member]?.memberBuilds[build.memberBuildID] = nil
        }
        connections[build.initiator]?.tunnelIDs[build.initiatorTunnelID] = nil
        connections[build.initiator]?.outgoing.remove(key)
        pruneWaitingBuilds(cluster: build.cluster)
        actions.append(.send(build.initiator, .tunnelConfirm(tunnelID: build.initiatorTunnelID, outcome: .timedOut)))
        resumeIfBelowLimit(build.initiator, actions: &actions)
    }

    /// Like `pruneWaitingRequests`, for tunnel builds waiting for a member.
    mutating func pruneWaitingBuilds(cluster: String) {
        guard var queue = waitingBuilds.removeValue(forKey: cluster) else { return }
        while let first = queue.first, builds[first] == nil { queue.removeFirst() }
        if !queue.isEmpty { waitingBuilds[cluster] = queue }
    }

    mutating func tunnelAllow(from id: ConnectionID, tunnelID: UInt64, bytes: UInt64, actions: inout [RelayAction]) {
        // ALLOW for a tunnel that is closing or closed is a harmless race: ignored.
        guard case .open(let key)? = connections[id]!.tunnelIDs[tunnelID], var tunnel = tunnels[key] else { return }
        let side = tunnel.side(of: id, tunnelID: tunnelID)
        let (sum, overflow) = tunnel.ends[side].sendAllowance.addingReportingOverflow(bytes)
        tunnel.ends[side].sendAllowance = overflow ? .max : sum
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
        guard sizeOrContinuation <= UInt64(settings.wire.maxMessageSize) else {
            violation(id, "protocol violation: tunnel message of \(sizeOrContinuation) bytes exceeds the limit of \(settings.wire.maxMessageSize)", actions: &actions)
            return
        }
        switch connections[id]!.tunnelIDs[tunnelID] {
        case nil:
            return  // Data racing a close: dropped.
        case .building:
            violation(id, "protocol violation: transfer on tunnel \(tunnelID) before it was built", actions: &actions)
            return
        case .open(let key):
            guard var tunnel = tunnels[key] else { return }
            let side = tunnel.side(of: id, tunnelID: tunnelID)
            guard chunkSize <= tunnel.ends[side].receiveAllowance else {
                violation(
                    id,
                    "protocol violation: tunnel \(tunnelID) sent \(chunkSize) bytes with only \(tunnel.ends[side].receiveAllowance) allowed",
                    actions: &actions)
                return
            }
            tunnel.ends[side].receiveAllowance -= chunkSize
            let other = 1 - side
            guard tunnel.ends[other].isOpen, !tunnel.ends[other].closeAfterDrain else {
                tunnels[key] = tunnel
                return  // The other side is gone; its data has nowhere to go.
            }
            tunnel.ends[other].queue.append((sizeOrContinuation, chunk))
            tunnels[key] = tunnel
            drain(key, side: other, actions: &actions)
        }
    }

    /// Forwards queued chunks to `side` while its allowance lasts, returning allowance to the
    /// sender as they leave; then closes `side` if the other side closed gracefully.
    private mutating func drain(_ key: UInt64, side: Int, actions: inout [RelayAction]) {
        guard var tunnel = tunnels[key] else { return }
        var end = tunnel.ends[side]
        var forwarded: UInt64 = 0
        while let head = end.queue.first, UInt64(head.chunk.readableBytes) <= end.sendAllowance {
            end.queue.removeFirst()
            let size = UInt64(head.chunk.readableBytes)
            end.sendAllowance -= size
            forwarded += size
            actions.append(
                .send(end.connection, .tunnelTransfer(tunnelID: end.tunnelID, sizeOrContinuation: head.sizeOrContinuation, chunk: head.chunk)))
        }
        let other = 1 - side
        if forwarded > 0, tunnel.ends[other].isOpen {
            tunnel.ends[other].receiveAllowance += forwarded
            actions.append(.send(tunnel.ends[other].connection, .tunnelAllow(tunnelID: tunnel.ends[other].tunnelID, bytes: forwarded)))
        }
        if end.closeAfterDrain && end.queue.isEmpty && end.isOpen {
            end.isOpen = false
            actions.append(.send(end.connection, .tunnelClose(tunnelID: end.tunnelID, reason: "")))
            connections[end.connection]?.tunnelIDs[end.tunnelID] = nil
        }
        tunnel.ends[side] = end
        if !tunnel.ends[0].isOpen && !tunnel.ends[1].isOpen {
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
                if let member = build.member { connections[member]?.memberBuilds[build.memberBuildID] = nil }
                pruneWaitingBuilds(cluster: build.cluster)
                connections[id]!.outgoing.remove(key)
                resumeIfBelowLimit(id, actions: &actions)
            }
        case .open(let key):
            guard var tunnel = tunnels[key] else { return }
            let side = tunnel.side(of: id, tunnelID: tunnelID)
            tunnel.ends[side].isOpen = false
            tunnel.ends[side].queue.removeAll()
            let other = 1 - side
            tunnel.ends[other].closeAfterDrain = true
            tunnels[key] = tunnel
            drain(key, side: other, actions: &actions)
        }
    }

    /// A tunnel's connection is gone: the other side fails now, with `reason`.
    mutating func dropTunnel(_ key: UInt64, closedBy id: ConnectionID, reason: String, actions: inout [RelayAction]) {
        guard let tunnel = tunnels.removeValue(forKey: key) else { return }
        for end in tunnel.ends where end.isOpen {
            if end.connection == id {
                continue
            }
            connections[end.connection]?.tunnelIDs[end.tunnelID] = nil
            actions.append(.send(end.connection, .tunnelClose(tunnelID: end.tunnelID, reason: reason)))
        }
    }
}
