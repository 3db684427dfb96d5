import DequeModule
import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinWire

// Request/reply, broadcast, and publish/subscribe.
extension RelayCore {
    // MARK: - Request / reply

    mutating func request(
        from caller: ConnectionID, id: UInt64, cluster: String, body: ByteBuffer, headers: [Header] = [], timeoutMillis: UInt64,
        now: NIODeadline, actions: inout [RelayAction]
    ) {
        if timeoutMillis == 0 {
            actions.append(.send(caller, .reply(id: id, outcome: .timedOut)))
            actions.append(.report(.requestTimedOut(cluster: cluster, handedToMember: false)))
            return
        }
        let key = makeKey()
        let deadline = deadline(now: now, millis: timeoutMillis)
        var request = PendingRequest(caller: .local(caller), callerRequestID: id, cluster: cluster, deadline: deadline, body: body)
        request.headers = headers
        request.failFast = connections[caller]!.dialect.hasFailureFrames
        request.routesHere = true
        let remote = FederatedName.isRemote(cluster, localNetwork: network) ? FederatedName(cluster, localNetwork: network) : nil
        request.network = remote?.network
        requests.insert(request, key: key)
        connections[caller]!.outgoing.insert(key)
        schedule(.request(key), at: deadline)
        if let remote, let (reason, detail) = exportRefusal(.request, remote) {
            requests.remove(key)
            answer(request, key: key, .refused(reason, detail), actions: &actions)
        } else if !dispatch(key, now: now, actions: &actions) {
            waitForMember(key, actions: &actions)
        }
        pauseIfAtLimit(caller, actions: &actions)
    }

    /// Sends a pending request on its way: to a member here if the cluster has one (and the
    /// policy prefers local members), else to a remote relay that serves the cluster. False
    /// when neither exists: the request waits for one. Requests from other relays are only
    /// ever given to members here (one hop, never forwarded again).
    mutating func dispatch(_ key: UInt64, excluding: Set<NodeID> = [], now: NIODeadline, actions: inout [RelayAction]) -> Bool {
        guard let request = requests[key], request.waitingBody != nil, request.deadline > now else { return false }
        if let target = request.network {
            return dispatchRemote(key, to: target, excluding: excluding, now: now, actions: &actions)
        }
        let hasLocal = clusters[request.cluster] != nil
        guard request.routesHere else { return handOver(key, now: now, actions: &actions) }
        if hasLocal && settings.routing.preferLocal { return handOver(key, now: now, actions: &actions) }
        let inFlight = requests.inFlight
        if let relay = routing.pick(cluster: request.cluster, excluding: excluding, inFlight: { inFlight[$0, default: 0] }) {
            forward(key, to: relay, now: now, actions: &actions)
            return true
        }
        return hasLocal && handOver(key, now: now, actions: &actions)
    }

    /// A request that no member or relay can take now: a `v1.0-draft2` caller's waits for one
    /// until its deadline; a `skein/1` caller hears "no members" (or, for another network,
    /// "network unreachable") at once — unless a relay known to serve the cluster (or a gateway)
    /// is only unusable for a moment (suspect, link down), when it waits too. A request another
    /// relay routes goes back to it with the reason, so it can choose again.
    mutating func waitForMember(_ key: UInt64, actions: inout [RelayAction]) {
        guard let request = requests[key] else { return }
        let fallback: PeerReplyOutcome
        let known: Bool
        if let target = request.network {
            fallback = .refused(.networkUnreachable, Self.unreachable(target))
            known = routing.knowsGateway(to: target, excluding: request.declinedBy)
        } else {
            fallback = .noMembers
            known = clusters[request.cluster] != nil || routing.knowsServer(of: request.cluster, excluding: request.declinedBy)
        }
        if !request.routesHere || (request.failFast && !known) {
            requests.remove(key)
            requests.prune(request.cluster)
            answer(request, key: key, request.refusal ?? fallback, actions: &actions)
        } else {
            requests.wait(key, cluster: request.cluster)
        }
    }

    /// Sends a pending request to a member of its cluster on this relay; false when none.
    mutating func handOver(_ key: UInt64, now: NIODeadline, actions: inout [RelayAction]) -> Bool {
        // Past its deadline (its timer has not run yet): the timer answers it, no member gets it.
        guard let request = requests[key], let body = request.waitingBody, request.deadline > now else { return false }
        guard let member = pickMember(of: request.cluster) else { return false }
        var conn = connections[member]!
        let memberRequestID = conn.nextAssignedID
        conn.nextAssignedID += 1
        conn.assigned[memberRequestID] = key
        connections[member] = conn
        requests.move(key, to: .handedOver(member: member, id: memberRequestID))
        let timeout = remainingMillis(request.deadline, now)
        if request.headers.isEmpty || conn.dialect < .skein2 {
            actions.append(.send(member, .request(id: memberRequestID, body: body, timeoutMillis: timeout)))
        } else {
            actions.append(.send(member, .hrequest(id: memberRequestID, headers: request.headers, body: body, timeoutMillis: timeout)))
        }
        return true
    }

    /// Sends a pending request to another relay, which answers with the reply, the member's
    /// fault, or "no members" (then it goes elsewhere). The relay knows it by `key`.
    mutating func forward(_ key: UInt64, to relay: NodeID, cluster: String? = nil, now: NIODeadline, actions: inout [RelayAction]) {
        guard let request = requests[key], let body = request.waitingBody else { return }
        requests.move(key, to: .forwarded(to: relay, body: body))
        let flags: PeerRequestFlags = request.failFast ? .failFast : []
        actions.append(
            .sendPeer(
                relay,
                PeerFrame.request(id: key, cluster: cluster ?? request.cluster, remainingMillis: remainingMillis(request.deadline, now), flags: flags, body: body)
                    .with(request.headers)))
    }

    /// Milliseconds left, rounded up: a member must never be told 0 ms ("timed out at once")
    /// while time is left.
    func remainingMillis(_ deadline: NIODeadline, _ now: NIODeadline) -> UInt64 {
        UInt64(max(0, ((deadline - now).nanoseconds + 999_999) / 1_000_000))
    }

    mutating func pickMember(of cluster: String) -> ConnectionID? {
        let connections = self.connections
        return clusters[cluster]?.pick { id in
            let conn = connections[id]!
            return (conn.assigned.count + conn.memberBuilds.count, conn.writable)
        }
    }

    /// A member joined `cluster` here, or a relay started serving it: send whatever waited.
    mutating func dispatchWaiting(cluster: String, now: NIODeadline, actions: inout [RelayAction]) {
        if var queue = requests.takeWaiting(cluster) {
            var stillWaiting = Deque<UInt64>()
            while let key = queue.popFirst() {
                guard requests[key] != nil else { continue }  // timed out or caller gone
                requests.update(key) { $0.declinedBy = [] }  // what relays serve changed: everyone may try again
                if !dispatch(key, now: now, actions: &actions) { stillWaiting.append(key) }
            }
            requests.giveBack(stillWaiting, cluster: cluster)
        }
        if var queue = waitingBuilds.take(cluster) {
            var stillWaiting = Deque<UInt64>()
            while let key = queue.popFirst() {
                guard builds[key] != nil else { continue }
                if !dispatchBuild(key, now: now, actions: &actions) { stillWaiting.append(key) }
            }
            waitingBuilds.giveBack(stillWaiting, cluster: cluster)
        }
    }

    /// Drops requests that no longer wait (timed out, or their caller left) from the front of a
    /// cluster's waiting queue, and the queue once empty: requests to clusters that never get a
    /// member must not pile up. An entry behind a live one goes when it reaches the front.
    mutating func pruneWaitingRequests(cluster: String) {
        requests.prune(cluster)
    }

    mutating func reply(from member: ConnectionID, id: UInt64, outcome: ReplyOutcome, headers: [Header] = [], actions: inout [RelayAction]) {
        guard let key = connections[member]!.assigned.removeValue(forKey: id),
            let request = requests.remove(key)
        else {
            if surveyReply(from: member, id: id, outcome: outcome, headers: headers, actions: &actions) { return }
            // Late (after the deadline), or for a caller that left: dropped, as the spec says.
            actions.append(.report(.lateReplyDropped(member)))
            return
        }
        switch outcome {
        case .success(let body): answer(request, key: key, .success(body), headers: headers, actions: &actions)
        case .fault(let fault): answer(request, key: key, .fault(fault), headers: headers, actions: &actions)
        }
    }

    /// Gives a request's caller its one answer (the request is already out of `requests`).
    /// A local `skein/1` caller hears the distinct failures as REQUEST FAILED; a `v1.0-draft2`
    /// caller can only hear `timedOut` (the core sends it those only at the deadline).
    /// A reply's headers reach a `skein/2` caller as HREPLY, and another relay inside HEADERS.
    mutating func answer(
        _ request: PendingRequest, key: UInt64, _ outcome: PeerReplyOutcome, headers: [Header] = [], actions: inout [RelayAction]
    ) {
        switch request.caller {
        case .local(let caller):
            connections[caller]?.outgoing.remove(key)
            var frame: RelayFrame
            let id = request.callerRequestID
            let failureFrames = connections[caller]?.dialect.hasFailureFrames == true
            switch outcome {
            case .success(let body): frame = .reply(id: id, outcome: .success(body))
            case .fault(let fault): frame = .reply(id: id, outcome: .fault(fault))
            case .timedOut: frame = .reply(id: id, outcome: .timedOut)
            case .noMembers:
                frame = failureFrames ? .requestFailed(id: id, reason: .noMembers, detail: request.cluster) : .reply(id: id, outcome: .timedOut)
            case .memberLost:
                frame = failureFrames
                    ? .requestFailed(id: id, reason: .memberLost, detail: "the member holding the request was lost")
                    : .reply(id: id, outcome: .timedOut)
            case .refused(let reason, let detail):
                // An Iris caller learns "not exported" as a fault (nothing will change before its
                // deadline); anything else it can only hear as a timeout.
                if failureFrames {
                    frame = .requestFailed(id: id, reason: reason, detail: detail)
                } else if reason == .notExported {
                    frame = .reply(id: id, outcome: .fault("not exported: \(detail)"))
                } else {
                    frame = .reply(id: id, outcome: .timedOut)
                }
            }
            if !headers.isEmpty, connections[caller]?.dialect == .skein2, case .reply(let id, let outcome) = frame {
                frame = .hreply(id: id, headers: headers, outcome: outcome)
            }
            actions.append(.send(caller, frame))
            resumeIfBelowLimit(caller, actions: &actions)
        case .relay(let origin):
            actions.append(.sendPeer(origin, PeerFrame.reply(id: request.callerRequestID, outcome: outcome).with(headers)))
        }
    }

    mutating func expireRequest(_ key: UInt64, now: NIODeadline, actions: inout [RelayAction]) {
        guard let request = requests.remove(key) else { return }
        if case .handedOver(let member, let memberRequestID) = request.stage { connections[member]?.assigned[memberRequestID] = nil }
        pruneWaitingRequests(cluster: request.cluster)
        actions.append(.report(.requestTimedOut(cluster: request.cluster, handedToMember: request.leftThisRelay)))
        // The origin relay runs the same deadline and answers its caller itself.
        guard case .local = request.caller else { return }
        answer(request, key: key, .timedOut, actions: &actions)
    }

    // MARK: - Broadcast

    /// A local client's broadcast: every member here, and one copy to each other relay with
    /// members (which delivers it to its own).
    mutating func broadcast(
        from sender: ConnectionID, cluster: String, message: ByteBuffer, headers: [Header] = [], actions: inout [RelayAction]
    ) {
        if remoteSendIsCached(cluster, .broadcast) || FederatedName.isRemote(cluster, localNetwork: network) {
            sendRemote(.broadcast, from: sender, text: cluster, body: message, headers: headers, actions: &actions)
        } else {
            broadcastHere(cluster: cluster, body: message, headers: headers, from: sender, actions: &actions)
        }
    }

    // MARK: - Publish / subscribe

    mutating func subscribe(_ id: ConnectionID, topic: String, actions: inout [RelayAction]) {
        let remote = FederatedName.isRemote(topic, localNetwork: network) ? FederatedName(topic, localNetwork: network) : nil
        guard let subscription = subscription(of: id, to: topic, bare: remote?.name ?? topic, actions: &actions) else { return }
        // A `skein/1` subscription to what the other network does not export is refused and not
        // registered; an Iris one is registered (it will simply never be fed). A pattern is
        // checked against the exports event by event, at the exporting gateway.
        if let remote, case .literal = subscription, connections[id]!.dialect.hasFailureFrames,
            let (reason, detail) = exportRefusal(.subscribe, remote)
        {
            refuse(id, op: .subscribe, name: topic, reason: reason, detail: detail, network: remote.network!, actions: &actions)
            return
        }
        guard topics.subscribe(id, to: subscription) else {
            violation(id, "protocol violation: already subscribed to topic \(topic.debugDescription)", actions: &actions)
            return
        }
        directoryVersion &+= 1
        if let target = remote?.network { refreshInterest(network: target, actions: &actions) }
    }

    /// What `topic` subscribes to on `id`: a pattern if `id` speaks `skein/2` and `bare` (the
    /// name without its network) has a wildcard token, else the topic of that name. Nil, after
    /// REFUSED (invalid name), for a pattern that is not one.
    private mutating func subscription(of id: ConnectionID, to topic: String, bare: String, actions: inout [RelayAction]) -> TopicSubscription? {
        guard connections[id]!.dialect >= .skein2, TopicPattern.isPattern(bare) else { return .literal(topic) }
        if let problem = TopicPattern.problem(with: bare) {
            actions.append(.send(id, .refused(opcode: Opcode.subscribe.rawValue, name: topic, reason: .invalidName, detail: problem)))
            return nil
        }
        return .pattern(topic)
    }

    mutating func unsubscribe(_ id: ConnectionID, topic: String, actions: inout [RelayAction]) {
        let name = FederatedName(topic, localNetwork: network)
        let subscription: TopicSubscription =
            connections[id]!.dialect >= .skein2 && TopicPattern.isPattern(name.name) ? .pattern(topic) : .literal(topic)
        guard topics.unsubscribe(id, from: subscription) else {
            violation(id, "protocol violation: not subscribed to topic \(topic.debugDescription)", actions: &actions)
            return
        }
        directoryVersion &+= 1
        if let target = name.network { refreshInterest(network: target, actions: &actions) }
    }

    /// A `skein/2` publish names a concrete topic: one with a wildcard token is refused (and
    /// not carried). False if refused.
    mutating func checkPublishable(_ id: ConnectionID, topic: String, actions: inout [RelayAction]) -> Bool {
        if let last = lastPublishable, last == topic { return true }
        guard TopicPattern.isPattern(FederatedName.isRemote(topic, localNetwork: network) ? FederatedName(topic, localNetwork: network).name : topic)
        else {
            lastPublishable = topic
            return true
        }
        actions.append(.send(id, .refused(
            opcode: Opcode.publish.rawValue, name: topic, reason: .invalidName,
            detail: "a published topic has no wildcard token ('*' or '>')")))
        return false
    }

    /// Sends an event on `topic` to local subscriptions: PUBLISH to those that name the topic,
    /// EVENT (naming the pattern) to matching patterns. `publisher`, a local connection, is
    /// paused by full outputs.
    /// With headers, a `skein/2` literal subscriber gets EVENT too (PUBLISH has no room for
    /// them), and older ones PUBLISH with the body unchanged.
    mutating func sendEvent(
        topic: String, body: ByteBuffer, headers: [Header] = [], to subscribers: LocalSubscribers, from publisher: ConnectionID?,
        actions: inout [RelayAction]
    ) {
        for subscriber in subscribers.literal {
            if headers.isEmpty || connections[subscriber]?.dialect != .skein2 {
                actions.append(.send(subscriber, .publish(topic: topic, event: body)))
            } else {
                actions.append(.send(subscriber, .event(subscription: topic, topic: topic, headers: headers, event: body)))
            }
            if let publisher { noteDelivery(from: publisher, to: subscriber, actions: &actions) }
        }
        for (pattern, subscriber) in subscribers.patterns {
            actions.append(.send(subscriber, .event(subscription: pattern, topic: topic, headers: headers, event: body)))
            if let publisher { noteDelivery(from: publisher, to: subscriber, actions: &actions) }
        }
    }

    /// A local client's publish: every subscription here, one copy to each other relay with
    /// subscribers (which delivers it to its own), and, on a gateway, one event to each other
    /// network subscribed through it. A publish to another network's topic goes there only:
    /// this network's subscribers of it get it back from that network, once, like every other.
    mutating func publish(
        from publisher: ConnectionID, topic: String, event: ByteBuffer, headers: [Header] = [], actions: inout [RelayAction]
    ) {
        // Either cached route says which network's topic it is: only a miss of both reads the name.
        if !publishRouteIsCached(topic), remoteSendIsCached(topic, .publish) || FederatedName.isRemote(topic, localNetwork: network) {
            sendRemote(.publish, from: publisher, text: topic, body: event, headers: headers, actions: &actions)
            return
        }
        let route = publishRoute(topic)
        for relay in route.relays {
            actions.append(.sendPeer(relay, PeerFrame.publish(topic: topic, body: event).with(headers)))
            noteDelivery(from: publisher, toRelay: relay, stream: .publish(topic: topic), actions: &actions)
        }
        sendEvent(topic: topic, body: event, headers: headers, to: route.subscribers, from: publisher, actions: &actions)
        if !foreign.isEmpty { deliverToInterest(topic: topic, body: event, headers: headers, from: publisher, actions: &actions) }
    }

    /// Whether the last publish route is for `topic` (so `topic` is one of this network's: only
    /// this network's topics are ever routed through `publishRoute`).
    func publishRouteIsCached(_ topic: String) -> Bool { lastPublishRoute?.topic == topic }

    /// Where an event on `topic` goes: the remote relays with subscribers and the local
    /// subscriptions. Answers are kept until local subscriptions or routing change: the last one
    /// (a flood of events to one topic compares one interned name), and up to
    /// `publishRouteLimit` recent ones by topic, so publishers that alternate among topics do
    /// not pay the indexes (literal and pattern, here and remote) per event.
    mutating func publishRoute(_ topic: String) -> PublishRoute {
        if let last = lastPublishRoute, last.directoryVersion == directoryVersion, last.routingVersion == routing.version,
            last.topic == topic
        {
            return last
        }
        if publishRoutesVersion != (directoryVersion, routing.version) {
            publishRoutes.removeAll(keepingCapacity: true)
            publishRoutesVersion = (directoryVersion, routing.version)
        } else if let known = publishRoutes[topic] {
            lastPublishRoute = known
            return known
        }
        let route = PublishRoute(
            topic: topic, directoryVersion: directoryVersion, routingVersion: routing.version,
            relays: routing.relays(subscribedTo: topic), subscribers: topics.subscribers(of: topic))
        lastPublishRoute = route
        if publishRoutes.count >= Self.publishRouteLimit { publishRoutes.removeAll(keepingCapacity: true) }
        publishRoutes[topic] = route
        return route
    }

    /// The most publish routes kept by topic (a bound on memory: a publisher of ever new topics
    /// clears them when it reaches it).
    static let publishRouteLimit = 1024
}
