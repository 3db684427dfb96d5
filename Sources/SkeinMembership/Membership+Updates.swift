import NIOCore

extension Membership {
    /// Applies one gossiped or merged update by SWIM's incarnation rules (see
    /// `Docs/membership.md`, "States and incarnations"). `learnedFrom` is the address of the
    /// member that told us, a second source for a metadata pull.
    mutating func apply(_ update: GossipUpdate, learnedFrom: MemberAddress?, now: NIODeadline, into out: inout [MembershipDirective]) {
        switch update {
        case .alive(let identity, let incarnation, let metadataVersion, let body):
            let memberID = identity.id
            if memberID == id {
                if incarnation > selfIncarnation {
                    selfIncarnation = incarnation + 1
                    enqueue(selfAlive)
                }
                return
            }
            var state = table[memberID]
            // Most gossip repeats what we know (each update is heard about λ·log n times): one
            // lookup settles it, and only metadata we lack may still need work.
            if let known = state, incarnation <= known.incarnation, body == nil || metadataVersion <= known.heldMetadataVersion {
                if known.isLive, known.metadataVersion > known.heldMetadataVersion {
                    requestMetadata(memberID, source: learnedFrom, now: now, into: &out)
                }
                return
            }
            applyAlive(identity, incarnation: incarnation, metadataVersion: metadataVersion, body: body, now: now, into: &out)
            state = table[memberID]
            // A small body rides inline: install it instead of pulling. A version has one body,
            // so it is good even when the update itself was stale (an older incarnation).
            if let body, let current = state, metadataVersion > current.heldMetadataVersion {
                receiveMetadata(memberID, version: metadataVersion, body: body, now: now, into: &out)
                state = table[memberID]
            }
            if let current = state, current.isLive, current.metadataVersion > current.heldMetadataVersion {
                requestMetadata(memberID, source: learnedFrom, now: now, into: &out)
            }
        case .suspect(let memberID, let incarnation, let accuser):
            if memberID == id { return heardAccusation(incarnation: incarnation, from: learnedFrom, now: now, into: &out) }
            correctStaleAccusation(memberID, incarnation: incarnation, teller: learnedFrom, into: &out)
            applySuspect(memberID, incarnation: incarnation, accuser: accuser, update: update, now: now, into: &out)
        case .dead(let memberID, let incarnation, let accuser):
            if memberID == id { return heardAccusation(incarnation: incarnation, from: learnedFrom, dead: true, now: now, into: &out) }
            correctStaleAccusation(memberID, incarnation: incarnation, teller: learnedFrom, into: &out)
            guard var state = table[memberID], state.status != .left, incarnation >= state.incarnation else { return }
            if state.status == .dead {
                state.incarnation = incarnation
                table[memberID] = state
                return
            }
            // Another member's verdict about one we hold alive: we never heard it suspected, so
            // the verdict comes from a view we do not share (typically the far side of a
            // partition that just healed). It is a suspicion here, which the member can refute
            // before our own timer runs out; a member that is really gone is confirmed dead by
            // that timer, shortened by every further verdict (each a confirmation).
            // Copies of the verdict (it comes directly and by gossip) and the verdicts of others
            // then confirm that suspicion; they do not kill on their own.
            if state.status == .alive || suspicions[memberID]?.fromVerdict == true {
                let suspicion = GossipUpdate.suspect(id: memberID, incarnation: incarnation, accuser: accuser)
                stats.verdictsHeldAsSuspicion += 1
                applySuspect(memberID, incarnation: incarnation, accuser: accuser, update: suspicion, now: now, into: &out)
                if state.status == .alive { suspicions[memberID]?.fromVerdict = true }
                return
            }
            markDown(memberID, status: .dead, incarnation: incarnation, accuser: accuser, update: update, now: now, into: &out)
        case .left(let memberID, let incarnation):
            if memberID == id {
                if !hasLeft { heardAccusation(incarnation: incarnation, from: learnedFrom, dead: true, now: now, into: &out) }
                return
            }
            guard let state = table[memberID], state.status != .left, incarnation >= state.incarnation else { return }
            markDown(memberID, status: .left, incarnation: incarnation, accuser: nil, update: update, now: now, into: &out)
        }
    }

    /// The teller accuses a member we know alive at a higher incarnation: it missed the
    /// refutation, and nobody re-gossips a stale claim, so gossip may not reach it before its
    /// own timer runs out. Tell it directly (one datagram per stale claim heard).
    private mutating func correctStaleAccusation(_ memberID: NodeID, incarnation: UInt64, teller: MemberAddress?, into out: inout [MembershipDirective]) {
        guard let teller, let state = table[memberID], state.status == .alive, incarnation < state.incarnation else { return }
        let alive = GossipUpdate.alive(
            state.identity, incarnation: state.incarnation, metadataVersion: state.metadataVersion, metadata: inlineMetadata(of: state))
        emitDatagram(Wire.datagram(sender: id, [.update(alive)]), to: teller, into: &out)
    }

    private mutating func applyAlive(
        _ identity: MemberIdentity, incarnation: UInt64, metadataVersion: UInt64, body: [UInt8]?, now: NIODeadline,
        into out: inout [MembershipDirective]
    ) {
        let memberID = identity.id
        // Another id at our own address is a previous process of ours: never a member.
        guard identity.address != address else { return }
        if var state = table[memberID] {
            guard incarnation > state.incarnation else { return }
            let previous = state.status
            let moved = state.address != identity.address
            if moved {
                guard claim(identity.address, for: memberID, generation: identity.generation, now: now, into: &out) else { return }
            }
            let renamed = state.name != identity.name
            // Keep the identity we hold while it is the same: one object however many updates.
            if state.identity != identity { state.identity = identity }
            state.incarnation = incarnation
            state.metadataVersion = max(state.metadataVersion, metadataVersion)
            state.status = .alive
            if previous != .alive { state.changedAt = now }
            table[memberID] = state
            if moved { table.designate(address: identity.address, holder: memberID) }
            if renamed { checkName(of: state, into: &out) }
            accusers[memberID] = nil
            if previous == .dead || previous == .left { liveOthers += 1 }
            suspicions[memberID] = nil
            enqueue(.alive(state.identity, incarnation: incarnation, metadataVersion: metadataVersion, metadata: body))
            if previous != .alive {
                if previous == .dead || previous == .left { insertIntoProbeOrder(memberID) }
                out.append(.event(.statusChanged(state.member, from: previous)))
            }
            // Back from the dead: it was out of reach (a partition) or held dead falsely; its
            // view may lack what happened meanwhile, and ours what it saw. Exchange them now.
            if previous == .dead { repair(with: identity.address, now: now, into: &out) }
            return
        }
        guard claim(identity.address, for: memberID, generation: identity.generation, now: now, into: &out) else { return }
        let state = MemberState(
            identity: identity, status: .alive, incarnation: incarnation, metadataVersion: metadataVersion, changedAt: now)
        table[memberID] = state
        table.designate(address: identity.address, holder: memberID)
        liveOthers += 1
        insertIntoProbeOrder(memberID)
        enqueue(.alive(identity, incarnation: incarnation, metadataVersion: metadataVersion, metadata: body))
        out.append(.event(.joined(state.member)))
        checkName(of: state, into: &out)
    }

    /// May `memberID` take `memberAddress`? A live member already there is a previous process
    /// and is superseded (marked left at once) unless its generation is newer, in which case the
    /// claim is stale and refused. The caller then designates the new holder.
    private mutating func claim(_ memberAddress: MemberAddress, for memberID: NodeID, generation memberGeneration: UInt64, now: NIODeadline, into out: inout [MembershipDirective]) -> Bool {
        if let holder = table.holder(of: memberAddress), holder != memberID, let holderState = table[holder] {
            if holderState.status != .left {
                guard memberGeneration >= holderState.generation else { return false }
                stats.superseded += 1
                markDown(
                    holder, status: .left, incarnation: holderState.incarnation, accuser: nil,
                    update: .left(id: holder, incarnation: holderState.incarnation), now: now, into: &out)
            }
        }
        return true
    }

    /// Same name as a live member at a different address: both stay (identity is the id), and
    /// the conflict is reported once per pair. The first holder keeps the name index.
    private mutating func checkName(of state: MemberState, into out: inout [MembershipDirective]) {
        if state.name == name {
            if reportedConflicts.insert([id, state.id]).inserted {
                out.append(.event(.nameConflict(existing: selfMember, new: state.member)))
            }
            return
        }
        if let holder = table.holder(ofName: state.name), holder != state.id, let holderState = table[holder], holderState.isLive {
            if holderState.address != state.address, reportedConflicts.insert([holder, state.id]).inserted {
                out.append(.event(.nameConflict(existing: holderState.member, new: state.member)))
            }
            return
        }
        table.designate(name: state.name, holder: state.id)
    }

    private mutating func applySuspect(_ memberID: NodeID, incarnation: UInt64, accuser: NodeID, update: GossipUpdate, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard var state = table[memberID], state.isLive, incarnation >= state.incarnation else { return }
        if state.status == .suspect && incarnation == state.incarnation {
            // Beyond K confirmations the timeout is at its minimum: further ones change nothing
            // and are neither kept nor re-gossiped (as in memberlist), so a suspicion heard by
            // all of a large mesh costs K entries, not n.
            guard var suspicion = suspicions[memberID], accuser != suspicion.firstAccuser,
                  suspicion.confirmers.count < suspicion.expectedConfirmations,
                  suspicion.confirmers.insert(accuser).inserted
            else { return }
            suspicions[memberID] = suspicion
            stats.suspicionConfirmations += 1
            enqueue(update)
            scheduleVerdict(memberID, now: now, into: &out)
            if accuser != id { probeOnSuspicion(memberID, now: now, into: &out) }
            return
        }
        let previous = state.status
        state.status = .suspect
        state.incarnation = incarnation
        state.changedAt = now
        table[memberID] = state
        accusers[memberID] = accuser
        let minimum = suspicionMinimum(settings.suspicionMinimum)
        let maximum = TimeAmount.nanoseconds(minimum.nanoseconds * Int64(settings.suspicionMaxMultiplier))
        let expected = min(settings.indirectProbes, max(0, liveCount - 2))
        let suspicion = Suspicion(
            start: now, incarnation: incarnation, confirmers: [], firstAccuser: accuser,
            expectedConfirmations: expected, minimum: minimum, maximum: maximum)
        suspicions[memberID] = suspicion
        schedule(.suspicion(memberID), at: suspicion.deadline)
        enqueue(update)
        if previous != .suspect {
            out.append(.event(.statusChanged(state.member, from: previous)))
        }
        if accuser != id { probeOnSuspicion(memberID, now: now, into: &out) }
    }

    /// `base` plus, beyond `directBroadcastLimit` live members, one gossip interval per
    /// (fanout + 1)-fold of the rest: what a refutation needs to reach everyone.
    func suspicionMinimum(_ base: TimeAmount) -> TimeAmount {
        var reach = settings.directBroadcastLimit
        var rounds: Int64 = 0
        while reach < liveCount {
            reach *= settings.gossipFanout + 1
            rounds += 1
        }
        return .nanoseconds(base.nanoseconds + rounds * settings.gossipInterval.nanoseconds)
    }

    /// Others suspect `memberID`: unless we probed it within the last probe interval, probe it
    /// now. If that fails too, our own suspicion is an independent confirmation, so Lifeguard's
    /// timeout shrinks within about one probe instead of waiting for others' random rounds; if
    /// it succeeds, the ping carried the accusation (buddy system) and the target refutes.
    mutating func probeOnSuspicion(_ memberID: NodeID, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard localHealth < settings.maxLocalHealth, probing[memberID] == nil, let state = table[memberID],
              state.status == .suspect
        else { return }
        if let last = lastProbed[memberID], now - last < settings.probeInterval { return }
        stats.suspicionProbesSent += 1
        startProbe(memberID, kind: .suspicion, now: now, into: &out)
    }

    /// Our own probe of a suspect had its stream ping refused: the shorter minimum applies.
    mutating func strengthenSuspicion(of memberID: NodeID, now: NIODeadline, into out: inout [MembershipDirective]) {
        let minimum = suspicionMinimum(settings.refusedSuspicionMinimum)
        guard var suspicion = suspicions[memberID], suspicion.minimum > minimum else { return }
        suspicion.minimum = minimum
        suspicions[memberID] = suspicion
        scheduleVerdict(memberID, now: now, into: &out)
    }

    /// Declares the suspect dead if its (shrunk) deadline has passed, else arms its timer; after
    /// a stall the verdict waits until `stalledUntil`.
    mutating func scheduleVerdict(_ memberID: NodeID, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard let suspicion = suspicions[memberID] else { return }
        if let stalledUntil, now < stalledUntil, suspicion.deadline < stalledUntil {
            schedule(.suspicion(memberID), at: stalledUntil)
        } else if suspicion.deadline <= now {
            declareDead(memberID, now: now, into: &out)
        } else {
            schedule(.suspicion(memberID), at: suspicion.deadline)
        }
    }

    /// The suspicion ran out: we declare the member dead, and tell every live member directly
    /// (their own timers may run later; a death verdict is news worth one datagram each).
    mutating func declareDead(_ memberID: NodeID, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard let state = table[memberID], state.status == .suspect else { return }
        stats.deathsDeclared += 1
        let update = GossipUpdate.dead(id: memberID, incarnation: state.incarnation, accuser: id)
        markDown(memberID, status: .dead, incarnation: state.incarnation, accuser: id, update: update, now: now, into: &out)
        broadcastDirectly(update, into: &out)
    }

    /// To dead or left: the record stays (dead ones are probed) until `reapAfter`.
    mutating func markDown(_ memberID: NodeID, status: MemberStatus, incarnation: UInt64, accuser: NodeID?, update: GossipUpdate, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard var state = table[memberID] else { return }
        let previous = state.status
        state.status = status
        state.incarnation = incarnation
        state.changedAt = now
        table[memberID] = state
        accusers[memberID] = accuser
        if status == .dead {
            recentlyDead.append(memberID)
            reconnecting.append(memberID)
        }
        if previous == .alive || previous == .suspect { liveOthers -= 1 }
        // A probe still out ends here: it would hold back the dead probes that tell it of its death.
        if let seq = probing.removeValue(forKey: memberID) { probes[seq] = nil }
        suspicions[memberID] = nil
        pulls[memberID] = nil
        enqueue(update)
        schedule(.reap(memberID), at: now + settings.reapAfter)
        out.append(.event(.statusChanged(state.member, from: previous)))
    }

    // MARK: Dissemination

    /// Queues `update` for piggybacking; it replaces any queued update about the same member.
    /// The update itself is kept, not its bytes: an `alive` holds the member's shared identity,
    /// so a queue of n updates copies no names or addresses. It is encoded each time it is sent.
    mutating func enqueue(_ update: GossipUpdate) {
        broadcastOrder += 1
        broadcasts[update.id] = Broadcast(update: update, transmits: 0, order: broadcastOrder)
        broadcastQueue.insert(BroadcastKey(transmits: 0, order: broadcastOrder, id: update.id))
    }

    /// Appends queued updates, fewest transmissions then newest first, while they fit in
    /// `maxDatagramBytes`. An update is dropped after `retransmitLimit` transmissions.
    mutating func piggyback(into bytes: inout [UInt8], skipping: NodeID?) {
        let limit = retransmitLimit
        var sent: [BroadcastKey] = []
        var setAside: [BroadcastKey] = []
        while let key = broadcastQueue.popMin() {
            guard let entry = broadcasts[key.id], entry.order == key.order, entry.transmits == key.transmits else { continue }
            let before = bytes.count
            if key.id != skipping { Wire.encode(entry.update, into: &bytes) }
            if key.id == skipping || bytes.count > settings.maxDatagramBytes {
                bytes.removeLast(bytes.count - before)
                setAside.append(key)
                // Smallest update is a `left` (18 bytes): stop once nothing can fit, or after a
                // few misses so a full datagram costs O(log q), not O(q).
                if settings.maxDatagramBytes - before < 18 || setAside.count >= 8 { break }
                continue
            }
            stats.updatesPiggybacked += 1
            let transmits = entry.transmits + 1
            if transmits >= limit {
                broadcasts[key.id] = nil
            } else {
                broadcasts[key.id]!.transmits = transmits
                sent.append(BroadcastKey(transmits: transmits, order: key.order, id: key.id))
            }
        }
        for key in setAside { broadcastQueue.insert(key) }
        for key in sent { broadcastQueue.insert(key) }
    }

    /// The held body of the member's current version, if small enough to ride inline.
    func inlineMetadata(of state: MemberState) -> [UInt8]? {
        state.heldMetadataVersion == state.metadataVersion ? inline(state.body?.bytes) : nil
    }

    /// Queued updates not yet fully disseminated (for tests and the simulator).
    public var pendingUpdates: Int { broadcasts.count }

    // MARK: Metadata

    mutating func requestMetadata(_ memberID: NodeID, source: MemberAddress?, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard let state = table[memberID] else { return }
        if var pull = pulls[memberID], pull.version >= state.metadataVersion {
            if let source, !pull.sources.contains(source) {
                pull.sources.append(source)
                pulls[memberID] = pull
                if pull.waiting { retryPull(memberID, early: true, now: now, into: &out) }
            }
            return
        }
        var sources = [state.address]
        if let source, source != state.address { sources.append(source) }
        let deadline = now + settings.metadataPullTimeout
        pulls[memberID] = MetadataPull(
            version: state.metadataVersion, attempt: 1, sources: sources, deadline: deadline, current: sources[0], asked: [sources[0]])
        stats.metadataPullsSent += 1
        sendStream(.metadataRequest(id: memberID, version: state.metadataVersion), to: sources[0], into: &out)
        schedule(.metadataPull(memberID), at: deadline)
    }

    /// Next source, round-robin, until `metadataPullAttempts`; then the pull is dropped and the
    /// next gossip or push-pull mentioning the version starts a new one. `early`: the current
    /// attempt failed before its timeout (stream failure, "not held"); then only a source not
    /// yet asked and not unreachable is asked at once, else the pull waits for its timer or a
    /// new source. Since new metadata is announced to everyone at once, the other holders are
    /// often still pulling it themselves: asking them all at once would burn every attempt.
    mutating func retryPull(_ memberID: NodeID, early: Bool = false, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard var pull = pulls[memberID] else { return }
        guard let state = table[memberID], state.isLive, state.heldMetadataVersion < pull.version,
              pull.attempt < settings.metadataPullAttempts
        else {
            pulls[memberID] = nil
            return
        }
        let start = (pull.sources.firstIndex(of: pull.current) ?? -1) + 1
        let rotation = (0..<pull.sources.count).map { pull.sources[(start + $0) % pull.sources.count] }
        let reachable = rotation.filter { !pull.unreachable.contains($0) }
        let source: MemberAddress
        if early {
            guard let fresh = reachable.first(where: { !pull.asked.contains($0) }) else {
                pull.waiting = true
                pulls[memberID] = pull
                return
            }
            source = fresh
        } else {
            pull.asked = []
            source = reachable.first ?? rotation[0]
        }
        pull.attempt += 1
        pull.current = source
        pull.asked.insert(source)
        pull.waiting = false
        pull.deadline = now + settings.metadataPullTimeout
        pulls[memberID] = pull
        stats.metadataPullRetries += 1
        stats.metadataPullsSent += 1
        sendStream(.metadataRequest(id: memberID, version: pull.version), to: source, into: &out)
        schedule(.metadataPull(memberID), at: pull.deadline)
    }

    mutating func answerMetadataRequest(_ memberID: NodeID, version: UInt64, to target: MemberAddress, into out: inout [MembershipDirective]) {
        stats.metadataPullsAnswered += 1
        if memberID == id, selfMetadataVersion >= version {
            sendStream(.metadataResponse(id: id, version: selfMetadataVersion, body: selfMetadataBytes), to: target, into: &out)
            return
        }
        if let state = table[memberID], let body = state.body, body.version >= version {
            sendStream(.metadataResponse(id: memberID, version: body.version, body: body.bytes), to: target, into: &out)
            return
        }
        sendStream(.metadataResponse(id: memberID, version: version, body: nil), to: target, into: &out)
    }

    mutating func receiveMetadata(_ memberID: NodeID, version: UInt64, body: [UInt8]?, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard let body else {
            retryPull(memberID, early: true, now: now, into: &out)
            return
        }
        guard let metadata = MemberMetadata.decode(body, limit: settings.maxMetadataBytes) else {
            stats.malformedDropped += 1
            return
        }
        guard var state = table[memberID], version > state.heldMetadataVersion else { return }
        state.body = MetadataBody(version: version, metadata: metadata, bytes: body)
        state.metadataVersion = max(state.metadataVersion, version)
        table[memberID] = state
        if let pull = pulls[memberID], version >= pull.version { pulls[memberID] = nil }
        out.append(.event(.metadataChanged(state.member)))
    }
}
