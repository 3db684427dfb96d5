import NIOCore

extension Membership {
    /// One step of the randomized round-robin: the next live member of a shuffled order; the
    /// order is reshuffled when exhausted, and new members are inserted at random positions.
    mutating func probeRound(now: NIODeadline, into out: inout [MembershipDirective]) {
        probeRoundAt = now + scaled(settings.probeInterval)
        schedule(.probeRound, at: probeRoundAt)
        if liveOthers == 0 && !seeds.isEmpty && joinRetryAt == nil {
            attemptJoin(now: now, into: &out)
        }
        probeReconnecting(now: now, into: &out)
        guard let target = nextProbeTarget() else { return }
        startProbe(target, kind: .regular, now: now, into: &out)
    }

    // MARK: Healing (see "Healing" in Docs/membership.md)

    /// Forgets, from the front, members no longer dead or dead for `reconnectWindow` or more.
    mutating func pruneReconnecting(now: NIODeadline) {
        var drop = 0
        while drop < reconnecting.count {
            guard let state = table[reconnecting[drop]], state.status == .dead, now - state.changedAt < settings.reconnectWindow else {
                drop += 1
                continue
            }
            break
        }
        if drop > 0 {
            reconnecting.removeFirst(drop)
            reconnectIndex = max(0, reconnectIndex - drop)
        }
    }

    /// The addresses of the members dead within `reconnectWindow`, oldest death first.
    mutating func recentlyDeadAddresses(now: NIODeadline) -> [MemberAddress] {
        pruneReconnecting(now: now)
        var seen: Set<NodeID> = []
        return reconnecting.compactMap { memberID in
            guard seen.insert(memberID).inserted, let state = table[memberID], state.status == .dead else { return nil }
            return state.address
        }
    }

    /// With every probe round, one member dead within `reconnectWindow` (round-robin) gets a
    /// dead probe: if it is alive behind a healed partition, it refutes in its ack.
    mutating func probeReconnecting(now: NIODeadline, into out: inout [MembershipDirective]) {
        pruneReconnecting(now: now)
        for _ in 0..<reconnecting.count {
            if reconnectIndex >= reconnecting.count { reconnectIndex = 0 }
            let memberID = reconnecting[reconnectIndex]
            reconnectIndex += 1
            guard let state = table[memberID], state.status == .dead, now - state.changedAt < settings.reconnectWindow,
                  probing[memberID] == nil
            else { continue }
            stats.reconnectProbesSent += 1
            startProbe(memberID, kind: .dead, now: now, into: &out)
            return
        }
    }

    /// Any message from `sender` shows that it runs. Held dead, it is told so at once (a dead
    /// probe: a ping carrying its death, at most one per probe interval) and refutes. Unknown
    /// (it knows us, we do not know it: a member whose death a joiner skipped, or one already
    /// reaped), we exchange full states with it.
    mutating func heardFrom(_ sender: NodeID, at address: MemberAddress, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard sender != id else { return }
        if let state = table[sender] {
            guard state.status == .dead, probing[sender] == nil else { return }
            stats.heardFromTheDead += 1
            startProbe(sender, kind: .dead, now: now, into: &out)
        } else {
            repair(with: address, now: now, into: &out)
        }
    }

    /// A push-pull with `address` now, to mend a view (after a refuted death, a member back from
    /// the dead, an unknown sender). At most one per probe interval: a heal seen from many sides
    /// costs a few full-state exchanges, and gossip carries the rest.
    mutating func repair(with address: MemberAddress?, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard let address, address != self.address else { return }
        if let last = lastRepairAt, now - last < settings.probeInterval { return }
        lastRepairAt = now
        stats.repairPushPulls += 1
        stats.pushPullsSent += 1
        sendStream(.pushPull(isRequest: true, records: stateRecords()), to: address, into: &out)
    }

    mutating func nextProbeTarget() -> NodeID? {
        for pass in 0..<2 {
            while probeIndex < probeOrder.count {
                let row = probeOrder[probeIndex]
                probeIndex += 1
                if let state = table.state(atRow: row), state.isLive { return state.id }
            }
            guard pass == 0 else { break }
            probeOrder = table.rows.indices.compactMap { table.rows[$0]?.isLive == true ? Int32($0) : nil }
            probeOrder.shuffle(using: &random)
            probeIndex = 0
        }
        return nil
    }

    mutating func insertIntoProbeOrder(_ memberID: NodeID) {
        guard let row = table.row(of: memberID) else { return }
        let position = Int.random(in: probeIndex...probeOrder.count, using: &random)
        probeOrder.insert(row, at: position)
    }

    /// Direct ping now; at `probeTimeout` (scaled) indirect pings and a stream ping; verdict at
    /// `probeInterval` (scaled). One outstanding probe per target.
    mutating func startProbe(_ target: NodeID, kind: ProbeKind, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard probing[target] == nil, let state = table[target] else { return }
        if kind != .dead { noteProbe(of: target, now: now) }
        let seq = nextSequence()
        probes[seq] = Probe(target: target, kind: kind)
        probing[target] = seq
        // Buddy system: a suspect (or dead) target hears the accusation with the ping itself.
        let buddy: GossipUpdate?
        switch state.status {
        case .suspect:
            buddy = .suspect(id: target, incarnation: state.incarnation, accuser: accusers[target] ?? id)
        case .dead:
            buddy = .dead(id: target, incarnation: state.incarnation, accuser: accusers[target] ?? id)
        case .alive, .left:
            buddy = nil
        }
        if kind == .dead { stats.deadProbesSent += 1 } else { stats.probesSent += 1 }
        sendDatagram([.ping(seq: seq, target: target)], buddy: buddy, to: state.address, into: &out)
        if kind != .dead {
            schedule(.probeIndirect(seq), at: now + scaled(settings.probeTimeout))
            schedule(.probeEnd(seq), at: now + scaled(settings.probeInterval))
        } else {
            // A dead probe asks only for an ack (its updates carry any refutation, however
            // late): done within a probe timeout, so the next probe round may send the next one.
            schedule(.probeEnd(seq), at: now + scaled(settings.probeTimeout))
        }
    }

    /// Remembers when `target`'s probe started, for one probe interval (all `probeOnSuspicion`
    /// asks); older entries are dropped once there are many, so the table stays small.
    mutating func noteProbe(of target: NodeID, now: NIODeadline) {
        lastProbed[target] = now
        if lastProbed.count > 64 { lastProbed = lastProbed.filter { now - $0.value < settings.probeInterval } }
    }

    mutating func probeIndirect(_ seq: UInt32, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard let probe = probes[seq], !probe.indirectSent, let target = table[probe.target], target.isLive else { return }
        probes[seq]!.indirectSent = true
        let chosen = indirectHelpers(excluding: probe.target)
        probes[seq]!.expectedNacks = chosen.count
        for helper in chosen {
            stats.indirectProbesSent += 1
            sendDatagram([.pingReq(seq: seq, target: probe.target, address: target.address)], to: table[helper]!.address, into: &out)
        }
        // TCP fallback in parallel: tells a UDP-only failure apart from a dead member.
        stats.streamPingsSent += 1
        sendStream(.ping(seq: seq, target: probe.target), to: target.address, into: &out)
    }

    /// k random alive members other than `target`. Sampled from the probe order (which holds
    /// every live member) so a failed probe costs O(k), not a scan and sort of the whole table;
    /// small tables, or a sample that keeps hitting suspect and departed members, fall back to
    /// the exact scan.
    mutating func indirectHelpers(excluding target: NodeID) -> [NodeID] {
        let k = settings.indirectProbes
        guard k > 0 else { return [] }
        var chosen: [NodeID] = []
        if probeOrder.count >= 4 * k {
            var tries = 0
            while chosen.count < k && tries < 8 * k {
                tries += 1
                let row = probeOrder[Int.random(in: 0..<probeOrder.count, using: &random)]
                guard let candidate = table.state(atRow: row), candidate.id != target, candidate.status == .alive,
                      !chosen.contains(candidate.id)
                else { continue }
                chosen.append(candidate.id)
            }
            if chosen.count == k { return chosen }
        }
        var helpers = table.filter { $0.status == .alive && $0.id != target }.map(\.id)
        helpers.shuffle(using: &random)
        return Array(helpers.prefix(k))
    }

    /// The probe's verdict, unless an ack already settled it: at `probeInterval` (scaled), or at
    /// once when the stream ping was refused.
    mutating func probeEnd(_ seq: UInt32, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard let probe = probes.removeValue(forKey: seq) else { return }
        if probing[probe.target] == seq { probing[probe.target] = nil }
        guard probe.kind != .dead, let state = table[probe.target], state.isLive else { return }
        if probe.streamAcked {
            stats.udpFailedWhileStreamWorked += 1
            return
        }
        // Lifeguard: missed nacks mean our own network is the likelier culprit. A refused
        // connection is an answer from the target's host: our network works.
        let delta = probe.refused ? 0 : probe.expectedNacks > 0 ? max(0, probe.expectedNacks - probe.nacks) : 1
        adjustHealth(delta)
        // Saturated health, or just back from a stall (the acks may be unread in our socket).
        guard localHealth < settings.maxLocalHealth, now >= stalledUntil ?? now else {
            stats.accusationsWithheld += 1
            return
        }
        if state.status == .alive { stats.suspicionsRaised += 1 }
        apply(.suspect(id: probe.target, incarnation: state.incarnation, accuser: id), learnedFrom: nil, now: now, into: &out)
        if probe.refused { strengthenSuspicion(of: probe.target, now: now, into: &out) }
    }

    mutating func handleAck(seq: UInt32, sender: NodeID, now: NIODeadline, into out: inout [MembershipDirective]) {
        if let probe = probes.removeValue(forKey: seq) {
            if probing[probe.target] == seq { probing[probe.target] = nil }
            stats.acksReceived += 1
            if sender == probe.target {
                if probe.kind != .dead { adjustHealth(-1) }
            } else {
                stats.indirectAcksReceived += 1
            }
            return
        }
        if let relay = relayed.removeValue(forKey: seq) {
            sendDatagram([.ack(seq: relay.requesterSeq)], to: relay.requester, into: &out)
        }
    }

    mutating func handlePing(seq: UInt32, target: NodeID, sender: NodeID, from: MemberAddress, now: NIODeadline, into out: inout [MembershipDirective]) {
        if target == id {
            // Buddy system, extended to the dead: a member we hold suspect or dead is pinging us,
            // so it is running; tell it, and it refutes at once (a resumed process).
            var buddy: GossipUpdate?
            if let state = table[sender] {
                switch state.status {
                case .suspect: buddy = .suspect(id: sender, incarnation: state.incarnation, accuser: accusers[sender] ?? id)
                case .dead: buddy = .dead(id: sender, incarnation: state.incarnation, accuser: accusers[sender] ?? id)
                case .alive, .left: buddy = nil
                }
            }
            sendDatagram([.ack(seq: seq)], buddy: buddy, to: from, into: &out)
        } else {
            // The sender has a previous process's id for our address: tell it who lives here now.
            emitDatagram(Wire.datagram(sender: id, [.update(selfAlive)]), to: from, into: &out)
        }
    }

    mutating func handlePingReq(seq: UInt32, target: NodeID, targetAddress: MemberAddress, from: MemberAddress, now: NIODeadline, into out: inout [MembershipDirective]) {
        guard target != id else { return }
        stats.pingReqsServed += 1
        let ourSeq = nextSequence()
        relayed[ourSeq] = RelayedProbe(requesterSeq: seq, requester: from)
        var buddy: GossipUpdate?
        if let state = table[target], state.status == .suspect {
            buddy = .suspect(id: target, incarnation: state.incarnation, accuser: accusers[target] ?? id)
        }
        sendDatagram([.ping(seq: ourSeq, target: target)], buddy: buddy, to: targetAddress, into: &out)
        schedule(.relayNack(ourSeq), at: now + nackDelay)
        schedule(.relayEnd(ourSeq), at: now + settings.probeInterval)
    }

    /// How long a helper waits for the target's ack before it nacks: four fifths of the time the
    /// prober has left between its ping-reqs and its verdict (`probeInterval − probeTimeout`,
    /// 400 ms on the LAN), so the nack is there before the verdict counts it (waiting a whole
    /// `probeTimeout`, as memberlist does, lands it just after, and every prober of a stopped
    /// member would blame its own network: Lifeguard's health +k for nothing).
    var nackDelay: TimeAmount {
        .nanoseconds((settings.probeInterval.nanoseconds - settings.probeTimeout.nanoseconds) * 4 / 5)
    }

    /// Every `deadProbeInterval`, ping the next dead member (round-robin), carrying its death
    /// so that, if it is alive behind a healed partition, it refutes in its ack.
    mutating func probeNextDead(now: NIODeadline, into out: inout [MembershipDirective]) {
        for pass in 0..<2 {
            while deadIndex < deadOrder.count {
                let row = deadOrder[deadIndex]
                deadIndex += 1
                if let candidate = table.state(atRow: row), candidate.status == .dead {
                    startProbe(candidate.id, kind: .dead, now: now, into: &out)
                    return
                }
            }
            guard pass == 0 else { return }
            deadOrder = table.rows.indices.compactMap { table.rows[$0]?.status == .dead ? Int32($0) : nil }
            deadOrder.shuffle(using: &random)
            deadIndex = 0
        }
    }
}
