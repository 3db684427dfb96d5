import DequeModule
import NIOCore
import SkeinWire

// Request/reply, broadcast, and publish/subscribe.
extension RelayCore {
    // MARK: - Request / reply

    mutating func request(
        from caller: ConnectionID, id: UInt64, cluster: String, body: ByteBuffer, timeoutMillis: UInt64,
        now: NIODeadline, actions: inout [RelayAction]
    ) {
        if timeoutMillis == 0 {
            actions.append(.send(caller, .reply(id: id, outcome: .timedOut)))
            actions.append(.report(.requestTimedOut(cluster: cluster, handedToMember: false)))
            return
        }
        let key = makeKey()
        let deadline = deadline(now: now, millis: timeoutMillis)
        requests[key] = PendingRequest(caller: caller, callerRequestID: id, cluster: cluster, deadline: deadline, body: body)
        connections[caller]!.outgoing.insert(key)
        schedule(.request(key), at: deadline)
        if !handOver(key, now: now, actions: &actions) {
            waitingRequests[cluster, default: []].append(key)
        }
        pauseIfAtLimit(caller, actions: &actions)
    }

    /// Sends a pending request to a member of its cluster; false when the cluster has none.
    private mutating func handOver(_ key: UInt64, now: NIODeadline, actions: inout [RelayAction]) -> Bool {
        // Past its deadline (its timer has not run yet): the timer answers it, no member gets it.
        guard var request = requests[key], let body = request.body, request.deadline > now else { return false }
        guard let member = pickMember(of: request.cluster) else { return false }
        var conn = connections[member]!
        let memberRequestID = conn.nextAssignedID
        conn.nextAssignedID += 1
        conn.assigned[memberRequestID] = key
        connections[member] = conn
        request.body = nil
        request.assignedTo = (member, memberRequestID)
        request.wasHandedOver = true
        requests[key] = request
        // Rounded up: a member must never be told 0 ms ("timed out at once") while time is left.
        let remaining = ((request.deadline - now).nanoseconds + 999_999) / 1_000_000
        actions.append(.send(member, .request(id: memberRequestID, body: body, timeoutMillis: UInt64(remaining))))
        return true
    }

    mutating func pickMember(of cluster: String) -> ConnectionID? {
        let connections = self.connections
        return clusters[cluster]?.pick { id in
            let conn = connections[id]!
            return (conn.assigned.count + conn.memberBuilds.count, conn.writable)
        }
    }

    /// A member joined `cluster`: hand it (and its peers) whatever was waiting for one.
    mutating func dispatchWaiting(cluster: String, now: NIODeadline, actions: inout [RelayAction]) {
        if var queue = waitingRequests.removeValue(forKey: cluster) {
            while let key = queue.popFirst() {
                guard requests[key] != nil else { continue }  // timed out or caller gone
                _ = handOver(key, now: now, actions: &actions)
            }
        }
        if var queue = waitingBuilds.removeValue(forKey: cluster) {
            while let key = queue.popFirst() {
                guard builds[key] != nil else { continue }
                _ = offerBuild(key, now: now, actions: &actions)
            }
        }
    }

    /// Drops requests that no longer wait (timed out, or their caller left) from the front of a
    /// cluster's waiting queue, and the queue once empty: requests to clusters that never get a
    /// member must not pile up. An entry behind a live one goes when it reaches the front.
    mutating func pruneWaitingRequests(cluster: String) {
        guard var queue = waitingRequests.removeValue(forKey: cluster) else { return }
        while let first = queue.first, requests[first] == nil { queue.removeFirst() }
        if !queue.isEmpty { waitingRequests[cluster] = queue }
    }

    mutating func reply(from member: ConnectionID, id: UInt64, outcome: ReplyOutcome, actions: inout [RelayAction]) {
        guard let key = connections[member]!.assigned.removeValue(forKey: id),
            let request = requests.removeValue(forKey: key)
        else {
            // Late (after the deadline), or for a caller that left: dropped, as the spec says.
            actions.append(.report(.lateReplyDropped(member)))
            return
        }
        connections[request.caller]?.outgoing.remove(key)
        let answer: RequestOutcome =
            switch outcome {
            case .success(let body): .success(body)
            case .fault(let fault): .fault(fault)
            }
        actions.append(.send(request.caller, .reply(id: request.callerRequestID, outcome: answer)))
        resumeIfBelowLimit(request.caller, actions: &actions)
    }

    mutating func expireRequest(_ key: UInt64, now: NIODeadline, actions: inout [RelayAction]) {
        guard let request = requests.removeValue(forKey: key) else { return }
        if let (member, memberRequestID) = request.assignedTo {
            connections[member]?.assigned[memberRequestID] = nil
        }
        pruneWaitingRequests(cluster: request.cluster)
        connections[request.caller]?.outgoing.remove(key)
        actions.append(.send(request.caller, .reply(id: request.callerRequestID, outcome: .timedOut)))
        actions.append(.report(.requestTimedOut(cluster: request.cluster, handedToMember: request.wasHandedOver)))
        resumeIfBelowLimit(request.caller, actions: &actions)
    }

    // MARK: - Broadcast

    mutating func broadcast(from sender: ConnectionID, cluster: String, message: ByteBuffer, actions: inout [RelayAction]) {
        guard let members = clusters[cluster]?.members else {
            actions.append(.report(.broadcastWithoutMembers(cluster: cluster)))
            return
        }
        for member in members {
            actions.append(.send(member, .broadcast(message: message)))
            noteDelivery(from: sender, to: member, actions: &actions)
        }
    }

    // MARK: - Publish / subscribe

    mutating func subscribe(_ id: ConnectionID, topic: String, actions: inout [RelayAction]) {
        guard connections[id]!.topics.insert(topic).inserted else {
            violation(id, "protocol violation: already subscribed to topic \(topic.debugDescription)", actions: &actions)
            return
        }
        topics[topic, default: []].append(id)
        directoryVersion &+= 1
    }

    mutating func unsubscribe(_ id: ConnectionID, topic: String, actions: inout [RelayAction]) {
        guard connections[id]!.topics.remove(topic) != nil else {
            violation(id, "protocol violation: not subscribed to topic \(topic.debugDescription)", actions: &actions)
            return
        }
        topics[topic]?.removeAll { $0 == id }
        if topics[topic]?.isEmpty == true { topics[topic] = nil }
        directoryVersion &+= 1
    }

    mutating func publish(from publisher: ConnectionID, topic: String, event: ByteBuffer, actions: inout [RelayAction]) {
        guard let subscribers = topics[topic] else { return }
        for subscriber in subscribers {
            actions.append(.send(subscriber, .publish(topic: topic, event: event)))
            noteDelivery(from: publisher, to: subscriber, actions: &actions)
        }
    }
}
