import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinWire

// Surveys (Docs/skein-2.md, "Surveys"): one question to every member of a cluster, on every
// relay, each answer streamed back as it comes, and one end with the tally.
//
// Every relay a survey passes through keeps one `Survey`: the members here it asked, and the
// relays (or gateway links) it sent the survey on, each of which answers member by member and
// then ends with its own tally. The relay a client asked sends it to every relay with members;
// a relay asked by another relay asks only its own members (one hop); a gateway asked by another
// network does what the client's relay does, inside its network.
extension RelayCore {
    struct Survey {
        /// Who hears the answers and the end: a local client or the relay that sent it here.
        var caller: Caller
        /// The caller's id for it: the client's survey id, or the sending relay's key.
        var callerID: UInt64
        var cluster: String
        var deadline: NIODeadline
        /// Members here that were asked and have not answered: connection → its request id.
        var members: [ConnectionID: UInt64] = [:]
        /// Relays the survey went on to and that have not ended it.
        var parts: [NodeID: Part] = [:]
        /// Members whose fate is known: those asked here, and every part that ended.
        var tally = SurveyTally()
        /// For a survey of another network's cluster: that network. Its one part is the route
        /// there, and its refusal (or a route that never carried it) fails the survey.
        var network: String?

        /// What one relay sent back so far; its SURVEY END replaces it with its own tally.
        struct Part {
            /// The members it advertises for the cluster: the count it is held to if it never ends.
            var advertised: UInt64
            var answered: UInt64 = 0
            var faulted: UInt64 = 0

            /// The tally when it will not end: members it advertised (or answered for, if more)
            /// and did not answer for are lost.
            var presumed: SurveyTally {
                let asked = max(advertised, answered + faulted)
                return SurveyTally(asked: asked, answered: answered, faulted: faulted, lost: asked - answered - faulted)
            }
        }

        var isComplete: Bool { members.isEmpty && parts.isEmpty }

        init(caller: Caller, callerID: UInt64, cluster: String, deadline: NIODeadline) {
            self.caller = caller
            self.callerID = callerID
            self.cluster = cluster
            self.deadline = deadline
        }
    }

    // MARK: - Starting

    /// A local `skein/2` client's SURVEY.
    mutating func survey(
        from caller: ConnectionID, id: UInt64, cluster: String, body: ByteBuffer, headers: [Header], timeoutMillis: UInt64,
        now: NIODeadline, actions: inout [RelayAction]
    ) {
        let key = makeKey()
        let survey = Survey(caller: .local(caller), callerID: id, cluster: cluster, deadline: deadline(now: now, millis: timeoutMillis))
        if FederatedName.isRemote(cluster, localNetwork: network) {
            let name = FederatedName(cluster, localNetwork: network)
            if let (reason, detail) = exportRefusal(.request, name) {
                actions.append(.send(caller, .requestFailed(id: id, reason: reason, detail: detail)))
                return
            }
            guard let target = name.network, let (next, carried) = orderedRoute(to: target, name: name) else {
                actions.append(.send(caller, .requestFailed(id: id, reason: .networkUnreachable, detail: Self.unreachable(name.network ?? ""))))
                return
            }
            var survey = survey
            survey.network = target
            start(survey, key: key, body: body, headers: headers, via: next, carrying: carried, now: now, actions: &actions)
        } else {
            start(survey, key: key, body: body, headers: headers, everyRelay: true, now: now, actions: &actions)
        }
        guard surveys[key] != nil else { return }
        connections[caller]!.outgoing.insert(key)
        pauseIfAtLimit(caller, actions: &actions)
    }

    /// A SURVEY from another relay: for this relay's members of `cluster`, or, for
    /// `name@network`, on over this gateway's link to that network.
    mutating func remoteSurvey(
        from relay: NodeID, id: UInt64, cluster: String, remainingMillis: UInt64, body: ByteBuffer, headers: [Header],
        now: NIODeadline, actions: inout [RelayAction]
    ) {
        var survey = Survey(caller: .relay(relay), callerID: id, cluster: cluster, deadline: deadline(now: now, millis: remainingMillis))
        guard FederatedName.isRemote(cluster, localNetwork: network) else {
            guard admitsSurvey(from: relay, id: id, cluster: cluster, everyRelay: false, actions: &actions) else { return }
            start(survey, key: makeKey(), body: body, headers: headers, everyRelay: false, now: now, actions: &actions)
            return
        }
        let name = remoteName(cluster)
        guard let target = name.network, let link = designatedLink(to: target) else {
            actions.append(.sendPeer(relay, .reply(id: id, outcome: .refused(.networkUnreachable, Self.unreachable(name.network ?? "")))))
            return
        }
        guard admitsSurvey(from: relay, id: id, cluster: cluster, everyRelay: false, actions: &actions) else { return }
        survey.network = target
        start(survey, key: makeKey(), body: body, headers: headers, via: link, carrying: name.name, now: now, actions: &actions)
    }

    /// A SURVEY from another network's gateway, for a cluster of this one: checked against the
    /// exports (as a request), then asked of every member in this network.
    mutating func foreignSurvey(
        from node: NodeID, _ gateway: ForeignGateway, id: UInt64, cluster: String, remainingMillis: UInt64, body: ByteBuffer,
        headers: [Header], now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard admits(.request, cluster, from: node, gateway, actions: &actions) else {
            let detail = "cluster \(cluster) is not exported by network \(network) to \(gateway.network)"
            actions.append(.sendPeer(node, .reply(id: id, outcome: .refused(.notExported, detail))))
            return
        }
        guard admitsSurvey(from: node, id: id, cluster: cluster, everyRelay: true, actions: &actions) else { return }
        let survey = Survey(caller: .relay(node), callerID: id, cluster: cluster, deadline: deadline(now: now, millis: remainingMillis))
        start(survey, key: makeKey(), body: body, headers: headers, everyRelay: true, now: now, actions: &actions)
    }

    /// Whether another relay (or gateway link) may have one more survey here: at most
    /// `maxPendingRequests` at once, as a client may have requests. Past that, the survey is
    /// answered at once with every member it would have asked counted lost (and reported), so
    /// a peer cannot make this relay hold or fan out without bound.
    private mutating func admitsSurvey(
        from relay: NodeID, id: UInt64, cluster: String, everyRelay: Bool, actions: inout [RelayAction]
    ) -> Bool {
        guard surveysFrom[relay, default: 0] >= settings.maxPendingRequests else { return true }
        var members = UInt64(clusters[cluster]?.members.count ?? 0)
        if everyRelay {
            for other in routing.relays(broadcastingTo: cluster) { members += UInt64(routing.memberCount(of: cluster, at: other)) }
        }
        actions.append(.report(.surveyRefused(relay)))
        actions.append(.sendPeer(relay, .surveyEnd(id: id, tally: SurveyTally(asked: members, lost: members))))
        return false
    }

    /// Asks every member here and, if `everyRelay`, sends the survey to every relay with members
    /// (suspended ones too: a survey, like a broadcast, is for everyone).
    private mutating func start(
        _ survey: Survey, key: UInt64, body: ByteBuffer, headers: [Header], everyRelay: Bool, now: NIODeadline,
        actions: inout [RelayAction]
    ) {
        var survey = survey
        if survey.deadline > now {
            let timeout = remainingMillis(survey.deadline, now)
            for member in clusters[survey.cluster]?.members ?? [] {
                var conn = connections[member]!
                let memberID = conn.nextAssignedID
                conn.nextAssignedID += 1
                conn.surveyed[memberID] = key
                connections[member] = conn
                survey.members[member] = memberID
                if headers.isEmpty || conn.dialect < .skein2 {
                    actions.append(.send(member, .request(id: memberID, body: body, timeoutMillis: timeout)))
                } else {
                    actions.append(.send(member, .hrequest(id: memberID, headers: headers, body: body, timeoutMillis: timeout)))
                }
            }
            survey.tally.asked = UInt64(survey.members.count)
            if everyRelay {
                for relay in routing.relays(broadcastingTo: survey.cluster) {
                    survey.parts[relay] = Survey.Part(advertised: UInt64(routing.memberCount(of: survey.cluster, at: relay)))
                    actions.append(
                        .sendPeer(relay, PeerFrame.survey(id: key, cluster: survey.cluster, remainingMillis: timeout, body: body).with(headers)))
                }
            }
        }
        insert(survey, key: key, actions: &actions)
    }

    /// Keeps a survey until it ends (at once, if nothing is outstanding).
    private mutating func insert(_ survey: Survey, key: UInt64, actions: inout [RelayAction]) {
        surveys[key] = survey
        if case .relay(let relay) = survey.caller { surveysFrom[relay, default: 0] += 1 }
        if survey.isComplete {
            end(key, actions: &actions)
        } else {
            schedule(.survey(key), at: survey.deadline)
        }
    }

    /// Sends the survey on to one relay or gateway link (for another network), as `carried`.
    private mutating func start(
        _ survey: Survey, key: UInt64, body: ByteBuffer, headers: [Header], via next: NodeID, carrying carried: String,
        now: NIODeadline, actions: inout [RelayAction]
    ) {
        var survey = survey
        if survey.deadline > now {
            survey.parts[next] = Survey.Part(advertised: 0)
            let remaining = remainingMillis(survey.deadline, now)
            actions.append(.sendPeer(next, PeerFrame.survey(id: key, cluster: carried, remainingMillis: remaining, body: body).with(headers)))
        }
        insert(survey, key: key, actions: &actions)
    }

    // MARK: - Answers

    /// A member here answered the survey it knows by `id`. False if it is no survey's.
    mutating func surveyReply(from member: ConnectionID, id: UInt64, outcome: ReplyOutcome, headers: [Header], actions: inout [RelayAction]) -> Bool {
        guard let key = connections[member]?.surveyed.removeValue(forKey: id) else { return false }
        guard surveys[key]?.members.removeValue(forKey: member) != nil else { return true }
        switch outcome {
        case .success: surveys[key]!.tally.answered += 1
        case .fault: surveys[key]!.tally.faulted += 1
        }
        forwardAnswer(key, outcome: outcome, headers: headers, actions: &actions)
        endIfComplete(key, actions: &actions)
        return true
    }

    /// A relay the survey went to sends one member's answer.
    mutating func remoteSurveyAnswer(from relay: NodeID, key: UInt64, outcome: ReplyOutcome, headers: [Header], actions: inout [RelayAction]) {
        guard surveys[key]?.parts[relay] != nil else { return }  // late: the survey ended
        switch outcome {
        case .success: surveys[key]!.parts[relay]!.answered += 1
        case .fault: surveys[key]!.parts[relay]!.faulted += 1
        }
        forwardAnswer(key, outcome: outcome, headers: headers, actions: &actions)
    }

    /// A relay the survey went to ended it there, with its tally (made consistent with the
    /// answers it streamed: another relay's counts are not trusted to add up).
    mutating func remoteSurveyEnd(from relay: NodeID, key: UInt64, tally: SurveyTally, actions: inout [RelayAction]) {
        guard let part = surveys[key]?.parts.removeValue(forKey: relay) else { return }
        surveys[key]!.tally = surveys[key]!.tally + tally.reconciled(answered: part.answered, faulted: part.faulted)
        endIfComplete(key, actions: &actions)
    }

    /// A relay could not take the survey on. A survey of another network, which went only
    /// there, fails with the reason (network unreachable, not exported); within this network,
    /// that relay's members are lost.
    mutating func remoteSurveyRefused(from relay: NodeID, key: UInt64, _ outcome: PeerReplyOutcome, actions: inout [RelayAction]) {
        guard let part = surveys[key]?.parts.removeValue(forKey: relay) else { return }
        if surveys[key]!.network != nil, surveys[key]!.isComplete {
            guard case .refused(let reason, let detail) = outcome else {
                fail(key, .networkUnreachable, Self.unreachable(surveys[key]!.network!), actions: &actions)
                return
            }
            fail(key, reason, detail, actions: &actions)
            return
        }
        surveys[key]!.tally = surveys[key]!.tally + part.presumed
        endIfComplete(key, actions: &actions)
    }

    /// Ends a survey with a failure instead of SURVEY END: REQUEST FAILED to a local caller,
    /// REPLY `refused` to the relay that sent it.
    private mutating func fail(_ key: UInt64, _ reason: FailureReason, _ detail: String, actions: inout [RelayAction]) {
        let survey = forget(key)
        switch survey.caller {
        case .local(let caller):
            actions.append(.send(caller, .requestFailed(id: survey.callerID, reason: reason, detail: detail)))
            resumeIfBelowLimit(caller, actions: &actions)
        case .relay(let origin):
            actions.append(.sendPeer(origin, .reply(id: survey.callerID, outcome: .refused(reason, detail))))
        }
    }

    private mutating func forwardAnswer(_ key: UInt64, outcome: ReplyOutcome, headers: [Header], actions: inout [RelayAction]) {
        let survey = surveys[key]!
        switch survey.caller {
        case .local(let caller):
            actions.append(.send(caller, .surveyAnswer(id: survey.callerID, headers: headers, outcome: outcome)))
        case .relay(let origin):
            actions.append(.sendPeer(origin, PeerFrame.surveyAnswer(id: survey.callerID, outcome: outcome).with(headers)))
        }
    }

    // MARK: - Losses

    /// A member that was asked is gone without answering.
    mutating func surveyedMemberGone(_ member: ConnectionID, surveyed: [UInt64: UInt64], actions: inout [RelayAction]) {
        for key in Set(surveyed.values).sorted() {
            guard surveys[key]?.members.removeValue(forKey: member) != nil else { continue }
            surveys[key]!.tally.lost += 1
            endIfComplete(key, actions: &actions)
        }
    }

    /// `relay` will not end the surveys it has: what it advertised and did not answer for is lost.
    /// (`neverReached`: nothing was sent, so nobody there was asked; a survey of another
    /// network whose route never carried it fails as unreachable.)
    mutating func surveysLost(at relay: NodeID, neverSent: Bool, actions: inout [RelayAction]) {
        for key in surveys.keys.sorted() {
            guard let part = surveys[key]?.parts.removeValue(forKey: relay) else { continue }
            if neverSent, let target = surveys[key]!.network, surveys[key]!.isComplete {
                fail(key, .networkUnreachable, Self.unreachable(target), actions: &actions)
                continue
            }
            surveys[key]!.tally = surveys[key]!.tally + (neverSent ? SurveyTally() : part.presumed)
            endIfComplete(key, actions: &actions)
        }
    }

    /// A local caller left: its surveys end here, unanswered (their members' answers are dropped).
    mutating func surveyCallerGone(_ key: UInt64) {
        guard surveys[key] != nil else { return }
        _ = forget(key)
    }

    /// The survey's deadline: members and relays that did not answer are lost.
    mutating func expireSurvey(_ key: UInt64, actions: inout [RelayAction]) {
        guard var survey = surveys[key] else { return }
        survey.tally.lost += UInt64(survey.members.count)
        for part in survey.parts.values { survey.tally = survey.tally + part.presumed }
        survey.parts = [:]
        surveys[key] = survey
        end(key, actions: &actions)
    }

    // MARK: - Ending

    private mutating func endIfComplete(_ key: UInt64, actions: inout [RelayAction]) {
        if surveys[key]?.isComplete == true { end(key, actions: &actions) }
    }

    /// SURVEY END to the caller, once.
    private mutating func end(_ key: UInt64, actions: inout [RelayAction]) {
        let survey = forget(key)
        switch survey.caller {
        case .local(let caller):
            actions.append(.send(caller, .surveyEnd(id: survey.callerID, tally: survey.tally)))
            resumeIfBelowLimit(caller, actions: &actions)
        case .relay(let origin):
            actions.append(.sendPeer(origin, .surveyEnd(id: survey.callerID, tally: survey.tally)))
        }
    }

    /// Removes a survey from every table: its members' later answers are dropped as late.
    private mutating func forget(_ key: UInt64) -> Survey {
        let survey = surveys.removeValue(forKey: key)!
        for (member, memberID) in survey.members { connections[member]?.surveyed[memberID] = nil }
        switch survey.caller {
        case .local(let caller):
            connections[caller]?.outgoing.remove(key)
        case .relay(let relay):
            surveysFrom[relay]! -= 1
            if surveysFrom[relay] == 0 { surveysFrom[relay] = nil }
        }
        return survey
    }
}
