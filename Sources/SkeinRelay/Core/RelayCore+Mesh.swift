import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinRouting
import SkeinWire

// Other relays: what they serve (from membership), and the frames they send (Docs/mesh.md).
extension RelayCore {
    /// A remote relay is alive and serves what `relay` says (its metadata changed, or it
    /// joined). Requests waiting for a cluster it serves leave now.
    public mutating func relayUpdated(_ relay: RemoteRelay, now: NIODeadline, actions: inout [RelayAction]) {
        let version = routing.version
        routing.update(relay)
        guard routing.version != version else { return }
        for cluster in relay.clusters.keys where requests.hasWaiting(cluster) || waitingBuilds.has(cluster) {
            dispatchWaiting(cluster: cluster, now: now, actions: &actions)
        }
        for target in relay.gateways.keys { dispatchWaitingRemote(network: target, now: now, actions: &actions) }
        refreshAllInterest(actions: &actions)
    }

    /// A remote relay should get no new work, for the reason `loss` says (Docs/mesh.md,
    /// "Failures"):
    ///
    /// - `suspect`: what it already has continues.
    /// - `linkBroken`, `dead`: lost. Its tunnels fail at this end with a reason. Requests
    ///   already forwarded to it may have reached a member, so they are never sent to a second
    ///   one: a `v1.0-draft2` caller gets its timeout at the deadline, a `skein/1` caller
    ///   "member lost" now.
    /// - `neverReached`: the link never carried anything (a dial failed): what was forwarded
    ///   goes elsewhere at once.
    /// - `left`: it left gracefully and still answers what it holds (it drains, and says
    ///   "member lost" itself for what it cannot finish), so its requests keep waiting.
    ///
    /// Suspect, broken and unreached relays stay known to serve their clusters (they may be back
    /// in a moment), so a `skein/1` request does not hear "no members" because of them.
    public mutating func relayUnavailable(_ id: NodeID, _ loss: RelayLoss, now: NIODeadline, actions: inout [RelayAction]) {
        switch loss {
        case .suspect, .linkBroken, .neverReached: routing.suspend(id)
        case .left, .dead:
            routing.remove(id)
            requests.forget(id)
        }
        refreshAllInterest(actions: &actions)
        guard loss != .suspect else { return }
        let neverSent = loss == .neverReached
        let leaving = loss == .left
        // Nothing more will be sent there: whoever waited for its link or its holds goes on.
        relayWritabilityChanged(id, writable: true, actions: &actions)
        forgetHolds(of: id, actions: &actions)
        if !surveys.isEmpty, !leaving { surveysLost(at: id, neverSent: neverSent, actions: &actions) }
        dropRelayTunnels(id, neverSent: neverSent, now: now, actions: &actions)
        let forwarded = requests.forwarded(to: id)
        guard neverSent else {
            // Sent on a link that broke: a member may have them. They are never re-sent, even
            // if a later dial to the relay fails before carrying anything. A `skein/1` caller
            // hears "member lost" now; a `v1.0-draft2` caller its timeout at the deadline.
            for key in forwarded {
                guard let request = requests[key] else { continue }
                if request.failFast && !leaving {
                    requests.remove(key)
                    answer(request, key: key, .memberLost, actions: &actions)
                } else if case .forwarded(let relay, let body) = request.stage {
                    requests.move(key, to: .inDoubt(at: relay, body: body))
                }
            }
            return
        }
        for key in forwarded {
            guard case .forwarded = requests[key]?.stage else { continue }
            reroute(key, from: id, now: now, actions: &actions)
        }
    }

    /// The peer link to `relay` crossed its high (false) or low (true) water mark. While it is
    /// full, local connections that publish or broadcast to that relay are paused, as they are
    /// for a full local subscriber: backpressure across relays, so no relay buffers without
    /// bound for a slower one.
    public mutating func relayWritabilityChanged(_ relay: NodeID, writable: Bool, actions: inout [RelayAction]) {
        if writable {
            guard let sources = blockedRelays.removeValue(forKey: relay) else { return }
            for source in sources.sorted() {
                guard var conn = connections[source], conn.blockedByRelays.remove(relay) != nil else { continue }
                connections[source] = conn
                if conn.isReading && conn.phase != .closed { actions.append(.resumeReading(source)) }
            }
        } else if blockedRelays[relay] == nil {
            blockedRelays[relay] = []
        }
    }

    /// A local connection sent `stream` to `relay`: pause it if that relay's link is full, or if
    /// that relay asked to hold the stream (its receiver is blocked).
    @inline(__always)
    mutating func noteDelivery(
        from source: ConnectionID, toRelay relay: NodeID, stream: @autoclosure () -> PeerFlowStream, actions: inout [RelayAction]
    ) {
        if !blockedRelays.isEmpty, blockedRelays[relay] != nil { pause(source, byLinkTo: relay, actions: &actions) }
        if holds.hasGrants { pause(source, byHold: HoldKey(relay: relay, stream: stream()), actions: &actions) }
    }

    private mutating func pause(_ source: ConnectionID, byLinkTo relay: NodeID, actions: inout [RelayAction]) {
        guard var conn = connections[source] else { return }
        let wasReading = conn.isReading
        guard conn.blockedByRelays.insert(relay).inserted else { return }
        connections[source] = conn
        blockedRelays[relay]!.insert(source)
        if wasReading { actions.append(.pauseReading(source)) }
    }

    private mutating func pause(_ source: ConnectionID, byHold key: HoldKey, actions: inout [RelayAction]) {
        guard holds.isHeld(key), var conn = connections[source] else { return }
        let wasReading = conn.isReading
        guard conn.heldBy.insert(key).inserted else { return }
        connections[source] = conn
        _ = holds.pause(source, by: key)
        if wasReading { actions.append(.pauseReading(source)) }
    }

    // MARK: - Flow control (Docs/mesh.md, "Flow control")

    /// Another relay asks this one to hold `stream` (`.hold`) or ends a hold (`.release`).
    mutating func flowControl(_ frame: PeerFrame, from relay: NodeID, now: NIODeadline, actions: inout [RelayAction]) {
        switch frame {
        case .hold(let stream, let leaseMillis):
            let key = HoldKey(relay: relay, stream: stream)
            let until = now + .milliseconds(Int64(min(leaseMillis, Self.maxHoldLeaseMillis)))
            guard holds.grant(key, until: until) else {
                actions.append(.report(.holdsRefused(relay)))
                return
            }
            schedule(.holdLease(key, until: until), at: until)
        case .release(let stream):
            let key = HoldKey(relay: relay, stream: stream)
            resume(holds.revoke(key), heldBy: key, actions: &actions)
        default:
            break
        }
    }

    /// The longest lease a HOLD may ask for: a bound on how long a peer's one frame can pause
    /// senders here without a refresh.
    static let maxHoldLeaseMillis: UInt64 = 60_000

    /// The hold `key` ended: its paused connections read again unless something else pauses them.
    mutating func resume(_ paused: Set<ConnectionID>, heldBy key: HoldKey, actions: inout [RelayAction]) {
        for source in paused.sorted() {
            guard var conn = connections[source], conn.heldBy.remove(key) != nil else { continue }
            connections[source] = conn
            if conn.isReading && conn.phase != .closed { actions.append(.resumeReading(source)) }
        }
    }

    /// RELEASE each hold nobody here needs now.
    mutating func release(_ keys: [HoldKey], actions: inout [RelayAction]) {
        for key in keys { actions.append(.sendPeer(key.relay, .release(stream: key.stream))) }
    }

    /// Every hold still needed goes out again, so a lost HOLD is healed and a granted one does
    /// not lapse while its receiver is blocked.
    mutating func refreshHolds(now: NIODeadline, actions: inout [RelayAction]) {
        refreshDue = nil
        guard holds.hasAsked else { return }
        for key in holds.askedKeys.sorted() {
            actions.append(.sendPeer(key.relay, .hold(stream: key.stream, leaseMillis: holdLeaseMillis)))
        }
        scheduleRefresh(now: now)
    }

    /// The one refresh timer, unless it is already armed (so a receiver that flaps between
    /// blocked and writable never starts a second chain of refreshes).
    private mutating func scheduleRefresh(now: NIODeadline) {
        guard refreshDue == nil else { return }
        // Half the lease, never less than a millisecond (a lease set in code below that would
        // otherwise refresh at `now` again, forever).
        let due = now + .nanoseconds(max(settings.holdLease.nanoseconds / 2, 1_000_000))
        refreshDue = due
        schedule(.refreshHolds, at: due)
    }

    /// The lease a HOLD asks for, in whole milliseconds (at least 1).
    var holdLeaseMillis: UInt64 { UInt64(max(settings.holdLease.nanoseconds / 1_000_000, 1)) }

    /// `relay` is gone: holds end both ways (what it paused here reads again; what it was asked
    /// is asked again on the next link, if still needed).
    mutating func forgetHolds(of relay: NodeID, actions: inout [RelayAction]) {
        guard holds.hasAsked || holds.hasGrants else { return }
        for (key, paused) in holds.forget(relay: relay) { resume(paused, heldBy: key, actions: &actions) }
    }

    /// Events or broadcasts from another relay were just queued for `receivers`. The link is not
    /// paused for one receiver (it carries every kind of traffic between the two relays), so a
    /// receiver whose output is blocked takes at most `slowConsumerBytes` of them; past that it is
    /// closed as a slow consumer at once (reported, counted, never silent), as it would be at
    /// `slowConsumerTimeout`. So a flat-out publisher on another relay cannot grow this relay's
    /// memory without bound for a subscriber that does not read.
    mutating func queuedWhileBlocked<C: Collection<ConnectionID>>(
        _ receivers: C, bytes: Int, from relay: NodeID, stream: PeerFlowStream, now: NIODeadline, actions: inout [RelayAction]
    ) {
        for id in receivers {
            guard let conn = connections[id], !conn.writable, conn.phase == .open else { continue }
            let queued = conn.queuedWhileBlocked + UInt64(bytes)
            connections[id]!.queuedWhileBlocked = queued
            if holds.ask(HoldKey(relay: relay, stream: stream), for: id) {
                actions.append(.sendPeer(relay, .hold(stream: stream, leaseMillis: holdLeaseMillis)))
                scheduleRefresh(now: now)
            }
            guard queued > settings.slowConsumerBytes else { continue }
            let reason = "slow consumer: more than \(settings.slowConsumerBytes) bytes from other relays queued while its output was blocked"
            actions.append(.report(.slowConsumer(id, reason: reason)))
            closeWithReason(id, reason, actions: &actions)
        }
    }

    /// The relays this one knows serve clusters or topics.
    public var remoteRelays: [NodeID: RemoteRelay] { routing.relays }

    /// Requests forwarded to `relay` and not answered yet.
    public func requestsInFlight(to relay: NodeID) -> Int { requests.inFlight[relay, default: 0] }

    /// A frame from another relay's peer link.
    /// `headers` are those of a HEADERS frame that wrapped this one (`skein/2`).
    public mutating func receivedPeer(
        _ frame: PeerFrame, headers: [Header] = [], from relay: NodeID, now: NIODeadline, actions: inout [RelayAction]
    ) {
        switch frame {
        case .headed(let carried, let inner):
            receivedPeer(inner, headers: carried, from: relay, now: now, actions: &actions)
        case .request(let id, let cluster, let remaining, let flags, let body):
            if FederatedName.isRemote(cluster, localNetwork: network) {
                relayedRemoteRequest(
                    from: relay, id: id, name: FederatedName(cluster, localNetwork: network), remainingMillis: remaining, flags: flags,
                    body: body, headers: headers, now: now, actions: &actions)
            } else {
                remoteRequest(
                    from: relay, id: id, cluster: cluster, remainingMillis: remaining, body: body, headers: headers, now: now,
                    actions: &actions)
            }
        case .reply(let id, let outcome):
            if surveys[id] != nil {
                remoteSurveyRefused(from: relay, key: id, outcome, actions: &actions)
            } else {
                remoteReply(from: relay, key: id, outcome: outcome, headers: headers, now: now, actions: &actions)
            }
        case .survey(let id, let cluster, let remaining, let body):
            remoteSurvey(from: relay, id: id, cluster: cluster, remainingMillis: remaining, body: body, headers: headers, now: now, actions: &actions)
        case .surveyAnswer(let id, let outcome):
            remoteSurveyAnswer(from: relay, key: id, outcome: outcome, headers: headers, actions: &actions)
        case .surveyEnd(let id, let tally):
            remoteSurveyEnd(from: relay, key: id, tally: tally, actions: &actions)
        case .broadcast(let cluster, let body):
            if FederatedName.isRemote(cluster, localNetwork: network) {
                relayedRemoteSend(.broadcast, name: remoteName(cluster), body: body, headers: headers, actions: &actions)
                return
            }
            // Delivered to members here only: a broadcast crosses one hop.
            let members = clusters[cluster]?.members ?? []
            deliverBroadcast(body, headers: headers, to: members, from: nil, actions: &actions)
            if blockedConnections > 0 {
                queuedWhileBlocked(members, bytes: body.readableBytes, from: relay, stream: .broadcast(cluster: cluster), now: now, actions: &actions)
            }
        case .publish(let topic, let body):
            if publishRouteIsCached(topic) == false, FederatedName.isRemote(topic, localNetwork: network) {
                relayedRemoteSend(.publish, name: remoteName(topic), body: body, headers: headers, actions: &actions)
                return
            }
            let subscribers = publishRoute(topic).subscribers
            sendEvent(topic: topic, body: body, headers: headers, to: subscribers, from: nil, actions: &actions)
            if blockedConnections > 0 {
                queuedWhileBlocked(subscribers.connections, bytes: body.readableBytes, from: relay, stream: .publish(topic: topic), now: now, actions: &actions)
            }
            if !foreign.isEmpty { deliverToInterest(topic: topic, body: body, headers: headers, from: nil, actions: &actions) }
        case .event(let topic, let body):
            relayedRemoteEvent(topic: topic, body: body, headers: headers, from: relay, now: now, actions: &actions)
        case .hold, .release:
            flowControl(frame, from: relay, now: now, actions: &actions)
        case .tunnelOpen(let id, let cluster, let remaining, let flags):
            if FederatedName.isRemote(cluster, localNetwork: network) {
                relayedRemoteTunnelOpen(
                    from: relay, id: id, name: FederatedName(cluster, localNetwork: network), remainingMillis: remaining, flags: flags,
                    now: now, actions: &actions)
            } else {
                remoteTunnelOpen(from: relay, id: id, cluster: cluster, remainingMillis: remaining, now: now, actions: &actions)
            }
        case .tunnelConfirm(let id, let outcome):
            remoteTunnelConfirm(from: relay, key: id, outcome: outcome, now: now, actions: &actions)
        case .tunnelAllowance(let id, _), .tunnelData(let id, _, _), .tunnelClose(let id, _):
            remoteTunnelFrame(frame, from: relay, key: id, actions: &actions)
        case .hello, .ping, .pong, .goodbye, .membership, .gateway, .interest:
            break  // Link control, membership and gateway control are the shell's.
        }
    }

    /// Another relay forwards a request: it goes to a member here or is answered "no members"
    /// at once, so the forwarding relay can try elsewhere while time is left.
    private mutating func remoteRequest(
        from relay: NodeID, id: UInt64, cluster: String, remainingMillis: UInt64, body: ByteBuffer, headers: [Header],
        now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard remainingMillis > 0, clusters[cluster] != nil else {
            actions.append(.sendPeer(relay, .reply(id: id, outcome: remainingMillis > 0 ? .noMembers : .timedOut)))
            return
        }
        let key = makeKey()
        let deadline = deadline(now: now, millis: remainingMillis)
        var request = PendingRequest(caller: .relay(relay), callerRequestID: id, cluster: cluster, deadline: deadline, body: body)
        request.headers = headers
        requests.insert(request, key: key)
        schedule(.request(key), at: deadline)
        if !handOver(key, now: now, actions: &actions) {
            requests.remove(key)
            actions.append(.sendPeer(relay, .reply(id: id, outcome: .noMembers)))
        }
    }

    private mutating func remoteReply(
        from relay: NodeID, key: UInt64, outcome: PeerReplyOutcome, headers: [Header], now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard let request = requests[key], request.forwardedTo == relay else {
            return  // late: the caller was answered (timeout) or left
        }
        switch outcome {
        case .noMembers, .refused(.networkUnreachable, _):
            requests.update(key) { $0.refusal = outcome }
            reroute(key, from: relay, now: now, actions: &actions)
        case .memberLost where request.failFast:
            requests.remove(key)
            answer(request, key: key, .memberLost, actions: &actions)
        case .memberLost:
            // A member had it: never sent to a second one. The caller's timeout comes at the deadline.
            requests.move(key, to: .lost)
        case .success, .fault, .timedOut, .refused:
            requests.remove(key)
            answer(request, key: key, outcome, headers: headers, actions: &actions)
        }
    }

    /// A request `relay` did not take goes to another relay or a member here, or waits.
    private mutating func reroute(_ key: UInt64, from relay: NodeID, now: NIODeadline, actions: inout [RelayAction]) {
        guard requests[key] != nil else { return }
        requests.decline(key, by: relay)
        requests.update(key) { $0.declinedBy.insert(relay) }
        let request = requests[key]!
        actions.append(.report(.requestRerouted(cluster: request.cluster, from: relay)))
        // Never back to a relay that declined it: two relays with stale metadata would bounce it
        // between them until its deadline. A routing change clears the list (dispatchWaiting).
        if !dispatch(key, excluding: request.declinedBy, now: now, actions: &actions) {
            waitForMember(key, actions: &actions)
        }
    }
}
