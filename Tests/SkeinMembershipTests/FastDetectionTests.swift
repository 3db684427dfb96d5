import NIOCore
import Testing

@testable import SkeinMembership

/// What a datagram is for: update-only datagrams are gossip rounds or direct broadcasts.
private func isUpdateOnly(_ bytes: [UInt8]) -> Bool {
    let messages = decoded(bytes)
    return !messages.isEmpty && messages.allSatisfy { if case .update = $0 { true } else { false } }
}

private func pings(_ directives: [MembershipDirective], to target: MemberAddress) -> [[DatagramMessage]] {
    directives.compactMap { directive in
        guard case .sendDatagram(let bytes, let to) = directive, to == target else { return nil }
        let messages = decoded(bytes)
        return messages.contains { if case .ping = $0 { true } else { false } } ? messages : nil
    }
}

@Suite struct GossipIntervalTests {
    @Test func gossipGoesOutOnlyWhileUpdatesAreQueuedToFanoutMembersPerInterval() {
        var (mesh, addresses) = Mesh.converged(8)
        let a = addresses[0]
        mesh.run(for: .seconds(2))
        #expect(addresses.allSatisfy { mesh.node($0).pendingUpdates == 0 })
        // At rest: no gossip datagrams and no gossip timer.
        let quiet = addresses.map { mesh.node($0).stats.gossipDatagramsSent }
        mesh.run(for: .seconds(1))
        #expect(addresses.map { mesh.node($0).stats.gossipDatagramsSent } == quiet)
        #expect(!mesh.node(a).timers.unordered.contains { if case .gossip = $0.kind { true } else { false } })

        // One queued update: a gossip round at once, to 3 distinct members, then one per 20 ms.
        let start = mesh.datagramLog.count
        let other = mesh.node(addresses[1])
        let update = GossipUpdate.alive(
            id: other.id, incarnation: other.incarnation, name: other.name, address: other.address,
            metadataVersion: 1, generation: 0)
        mesh.nodes[a]!.enqueue(update)
        mesh.call(a) { $0.tick(now: $1) }  // arms the gossip timer at once
        mesh.run(for: .zero)
        let first = mesh.datagramLog[start...].filter { $0.0 == a && isUpdateOnly($0.2) }
        #expect(first.count == 3)
        #expect(Set(first.map(\.1)).count == 3)
        mesh.run(for: .milliseconds(19))
        #expect(mesh.datagramLog[start...].filter { $0.0 == a && isUpdateOnly($0.2) }.count == 3)
        // λ·⌈log10(n + 1)⌉ = 4 transmissions in all: the fourth rides on a probe or ack, or on
        // the next round.
        mesh.run(for: .seconds(1))
        let carriers = mesh.datagramLog[start...].filter { $0.0 == a && decoded($0.2).contains(.update(update)) }
        #expect(carriers.count == 4)
        #expect(mesh.node(a).pendingUpdates == 0)
        let sent = mesh.node(a).stats.gossipDatagramsSent
        mesh.run(for: .seconds(1))
        #expect(mesh.node(a).stats.gossipDatagramsSent == sent)
    }

    @Test func aLargeTableDrawsGossipTargetsWithoutScanningIt() throws {
        let known = ConvergedStartTests.known(2000)
        var core = try Membership(
            id: known[0].id, name: "node-1", address: Mesh.address(1), metadata: MemberMetadata(zone: "z"), settings: .lan,
            seed: 9, now: .uptimeNanoseconds(1_000_000_000), knownMembers: known)
        var targets: [MemberAddress: Int] = [:]
        for round in 0..<300 {
            core.enqueue(.left(id: NodeID(high: 9, low: UInt64(round)), incarnation: 0))
            let drawn = core.gossipTargets(now: .uptimeNanoseconds(1_000_000_000))
            #expect(drawn.count == MembershipSettings.lan.gossipFanout)
            #expect(Set(drawn).count == drawn.count)
            for target in drawn { targets[target, default: 0] += 1 }
        }
        #expect(!targets.keys.contains(Mesh.address(1)))
        #expect(targets.count > 700)  // 900 draws over 1,999 members: spread, not a few favourites
    }

    @Test func deadMembersStayGossipTargetsForGossipToTheDead() {
        var lone = LoneCore(peers: [2, 3])
        lone.gossip(LoneCore.killed(2, by: 3), from: 3)
        #expect(lone.status(2) == .dead)
        lone.datagrams = []
        lone.advance(to: lone.now)  // the gossip round starts at once: 2 of 3 possible targets
        #expect(lone.datagrams.contains { $0.1 == LoneCore.address(2) && isUpdateOnly($0.0) })
        #expect(lone.datagrams.contains { $0.1 == LoneCore.address(3) && isUpdateOnly($0.0) })
        lone.advance(to: lone.now + .milliseconds(600))
        lone.datagrams = []
        lone.core.enqueue(.left(id: LoneCore.id(9), incarnation: 0))
        lone.advance(to: lone.now + .milliseconds(100))
        // 600 ms after the death (> gossipToTheDead = 500 ms) only the live member gets gossip.
        #expect(lone.datagrams.contains { $0.1 == LoneCore.address(3) && isUpdateOnly($0.0) })
        #expect(!lone.datagrams.contains { $0.1 == LoneCore.address(2) && isUpdateOnly($0.0) })
    }

    @Test(arguments: [(10, 2), (32, 2), (33, 4), (64, 4), (65, 6), (200, 8)])
    func pushPullIntervalScalesBeyond32Members(members: Int, seconds: Int64) {
        let lone = LoneCore(peers: (2...UInt64(members)).map { $0 })
        #expect(lone.core.liveCount == members)
        #expect(lone.core.pushPullInterval == .seconds(seconds))
    }

    @Test func periodicPushPullUsesTheScaledInterval() {
        var lone = LoneCore(peers: (2...60).map { UInt64($0) })
        let start = lone.now
        lone.advance(to: start + .seconds(2))  // scheduled at init, when we were alone
        #expect(lone.core.stats.pushPullsSent == 1)
        lone.advance(to: start + .milliseconds(5999))
        #expect(lone.core.stats.pushPullsSent == 1)
        lone.advance(to: start + .seconds(6))
        #expect(lone.core.stats.pushPullsSent == 2)
    }
}

@Suite struct FastDetectionTests {
    @Test func hearingASuspicionProbesTheSuspectAtOnceAndAFailureConfirms() {
        var (mesh, addresses) = Mesh.converged(5)
        let a = addresses[0], b = addresses[1], c = addresses[2], d = addresses[3]
        let bID = mesh.node(b).id, cID = mesh.node(c).id, dID = mesh.node(d).id
        // Wait until a has not probed b for a probe interval, then b stops.
        for _ in 0..<1000 {
            if mesh.node(a).probing[bID] == nil, let last = mesh.node(a).lastProbed[bID], mesh.now - last >= .milliseconds(100) { break }
            mesh.run(for: .milliseconds(1))
        }
        mesh.pause(b)
        #expect(mesh.nodes[a]!.member(bID)?.status == .alive)
        // Nobody else suspects b yet; c's accusation reaches a.
        let suspect = Wire.datagram(sender: cID, [.update(.suspect(id: bID, incarnation: 0, accuser: cID))])
        var directives = mesh.nodes[a]!.receiveDatagram(suspect, from: c, now: mesh.now)
        let ping = pings(directives, to: b)
        #expect(ping.count == 1)
        #expect(ping.first?.contains(.update(.suspect(id: bID, incarnation: 0, accuser: cID))) == true)  // buddy
        #expect(mesh.node(a).stats.suspicionProbesSent == 1)
        mesh.perform(directives, from: a)
        // A second accuser within the probe interval: a confirmation, but no second probe.
        directives = mesh.nodes[a]!.receiveDatagram(
            Wire.datagram(sender: dID, [.update(.suspect(id: bID, incarnation: 0, accuser: dID))]), from: d, now: mesh.now)
        #expect(pings(directives, to: b).isEmpty)
        mesh.perform(directives, from: a)
        let confirmations = mesh.node(a).suspicions[bID]!.confirmers
        #expect(confirmations == [dID])
        // b stays silent: a's own probe fails at 100 ms and counts as an independent confirmation.
        mesh.run(for: .milliseconds(101))
        #expect(mesh.node(a).suspicions[bID]?.confirmers.contains(mesh.node(a).id) == true)
        mesh.resume(b)
    }

    @Test func refusedStreamPingUsesTheShortMinimumAndAllDeclareWithinIt() {
        let lan = MembershipSettings.lan
        var (mesh, addresses) = Mesh.converged(10, settings: lan)
        let victim = addresses[9]
        let victimID = mesh.node(victim).id
        let crashedAt = mesh.now
        mesh.crash(victim)
        mesh.run(for: .seconds(8))
        let others = Array(addresses.dropLast())
        var suspected: [NIODeadline] = [], died: [NIODeadline] = []
        for observer in others {
            let changes = mesh.statusChanges(at: observer, of: victimID)
            #expect(changes.map(\.2) == [.suspect, .dead])
            suspected.append(changes.first!.0)
            died.append(changes.last!.0)
            #expect(mesh.node(observer).suspicions[victimID] == nil)
        }
        let firstSuspicion = suspected.min()!, firstDeath = died.min()!, lastDeath = died.max()!
        #expect(others.map { mesh.node($0).stats.probesRefused }.reduce(0, +) >= 3)
        // Never without a suspicion period, and no longer than the refused minimum once confirmed.
        #expect(firstDeath - firstSuspicion >= lan.refusedSuspicionMinimum)
        #expect(firstDeath - firstSuspicion < lan.suspicionMinimum)
        // The verdict goes to everyone directly.
        #expect(lastDeath - firstDeath <= .milliseconds(2))
        // The first failed probe ends 500 ms after it started (direct ping timeout, then refused).
        #expect(firstSuspicion - crashedAt >= lan.probeTimeout)
    }

    @Test func aSuspicionRestingOnTimeoutsOnlyWaitsThePlainMinimum() {
        let lan = MembershipSettings.lan
        var (mesh, addresses) = Mesh.converged(10, settings: lan)
        let victim = addresses[9]
        let victimID = mesh.node(victim).id
        mesh.pause(victim)  // a stopped process: no refusal, just silence
        mesh.call(addresses[0]) { $0.linkBroken(victimID, now: $1) }
        mesh.run(for: .seconds(10))
        let others = Array(addresses.dropLast())
        let suspected = others.compactMap { mesh.statusChanges(at: $0, of: victimID).first?.0 }
        let died = others.compactMap { mesh.statusChanges(at: $0, of: victimID).last { $0.2 == .dead }?.0 }
        #expect(died.count == others.count)
        #expect(died.min()! - suspected.min()! >= lan.suspicionMinimum)
        #expect(others.allSatisfy { mesh.node($0).stats.probesRefused == 0 })
    }

    /// The pause starts at several offsets within a probe round, so the first suspicion starts
    /// at every phase of the probers' cycles.
    @Test(arguments: [0, 137, 333, 501, 777, 901])
    func aTwoSecondPauseIsNeverDeclaredDead(offsetMillis: Int64) {
        var (mesh, addresses) = Mesh.converged(10, settings: .lan)
        mesh.run(for: .milliseconds(offsetMillis))
        let sleeper = addresses[4]
        let sleeperID = mesh.node(sleeper).id
        let suspicionsBefore = mesh.node(sleeper).stats.suspicionsRaised
        mesh.pause(sleeper)
        // The worst case: a probe of the sleeper starts just as it stops, so the first suspicion
        // comes as early as it can (one probe interval later). Others' regular probes add more.
        let prober = addresses.first { $0 != sleeper && mesh.node($0).probing[sleeperID] == nil }!
        mesh.call(prober) { $0.linkBroken(sleeperID, now: $1) }
        mesh.run(for: .seconds(2))
        mesh.resume(sleeper)
        mesh.run(for: .milliseconds(5))
        let others = addresses.filter { $0 != sleeper }
        for observer in others { #expect(mesh.status(of: sleeper, at: observer) == .alive) }
        mesh.run(for: .seconds(15))
        var suspectedBy = 0
        for observer in others {
            let changes = mesh.statusChanges(at: observer, of: sleeperID).map(\.2)
            #expect(!changes.contains(.dead))
            if changes.contains(.suspect) { suspectedBy += 1 }
        }
        #expect(suspectedBy > 0)  // the pause was long enough to be noticed
        #expect(mesh.converged())
        // Back from the stall, the sleeper accused no one.
        #expect(mesh.node(sleeper).stats.stalls >= 1)
        #expect(mesh.node(sleeper).stats.suspicionsRaised == suspicionsBefore)
    }

    @Test func aFiveSecondPauseIsDeclaredDeadAndIsAliveEverywhereOneRoundTripAfterResuming() {
        var (mesh, addresses) = Mesh.converged(10, settings: .lan)
        let sleeper = addresses[4]
        let sleeperID = mesh.node(sleeper).id
        mesh.pause(sleeper)
        // Probed as it stops (the harness runs all probe rounds in phase, which could leave it
        // unprobed for several rounds; real relays' rounds are not aligned).
        mesh.call(addresses[0]) { $0.linkBroken(sleeperID, now: $1) }
        mesh.run(for: .seconds(5))
        let others = addresses.filter { $0 != sleeper }
        for observer in others { #expect(mesh.status(of: sleeper, at: observer) == .dead) }
        mesh.resume(sleeper)
        mesh.run(for: .milliseconds(3))
        for observer in others { #expect(mesh.status(of: sleeper, at: observer) == .alive) }
        #expect(mesh.node(sleeper).stats.refutations >= 1)
        mesh.run(for: .seconds(5))
        #expect(mesh.converged())
        for observer in others {
            #expect(mesh.statusChanges(at: observer, of: sleeperID).map(\.2) == [.suspect, .dead, .alive])
        }
    }
}

@Suite struct LossTests {
    /// 40% of datagrams lost everywhere, and TCP segments too (retransmitted after 200 ms,
    /// doubling): suspicions come and go, but every one is refuted before its minimum.
    @Test func aStarvingMemberStaysDeadUntilItRunsAWindowWithoutAStallThenRefutesOnce() {
        var settings = MembershipSettings.fastLocal
        settings.probeInterval = .milliseconds(100)
        var lone = LoneCore(peers: [2, 3, 4], settings: settings)
        let window = TimeAmount.milliseconds(1000)  // ten probe intervals
        // Starved: its timers fire 300 ms late, three times within the window.
        for _ in 0..<3 {
            lone.now = lone.core.nextWakeup + .milliseconds(300)
            lone.record(lone.core.tick(now: lone.now))
        }
        #expect(lone.core.stats.stalls == 3)
        lone.datagrams = []
        lone.gossip([.update(.dead(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.core.incarnation == 0)
        #expect(lone.core.stats.refutationsWithheld == 1)
        #expect(!lone.datagrams.contains { decoded($0.0).contains(.update(LoneCore.selfAlive(incarnation: 1))) })
        // Nor a suspicion: refuting it would bring us back as surely as refuting the death.
        lone.gossip([.update(.suspect(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(2)))], from: 2)
        #expect(lone.core.incarnation == 0)
        #expect(lone.core.stats.refutationsWithheld == 2)
        // Running on time for a whole window after the last stall: one refutation, to everyone.
        let lastStall = lone.now
        lone.datagrams = []
        lone.advance(to: lastStall + window - .milliseconds(1))
        #expect(lone.core.incarnation == 0)
        lone.advance(to: lastStall + window + .milliseconds(1))
        #expect(lone.core.incarnation == 1)
        let refutation = DatagramMessage.update(LoneCore.selfAlive(incarnation: 1))
        #expect(Set(lone.datagrams.filter { decoded($0.0) == [refutation] }.map(\.1)) == Set([2, 3, 4].map { LoneCore.address($0) }))
    }

    @Test func aBusyMemberWhoseTimersRunAFewTensOfMillisecondsLateStillRefutes() {
        var settings = MembershipSettings.fastLocal
        settings.probeInterval = .milliseconds(100)
        var lone = LoneCore(peers: [2, 3], settings: settings)
        for _ in 0..<5 {
            lone.now = lone.core.nextWakeup + .milliseconds(120)
            lone.record(lone.core.tick(now: lone.now))
        }
        #expect(lone.core.stats.stalls == 5)
        lone.gossip([.update(.suspect(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.core.incarnation == 1)
        #expect(lone.core.stats.refutationsWithheld == 0)
    }

    @Test func aPauseRefutesADeathAtOnce() {
        var lone = LoneCore(peers: [2, 3])
        lone.now = lone.core.nextWakeup + .milliseconds(250)
        lone.record(lone.core.tick(now: lone.now))
        lone.gossip([.update(.dead(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.core.incarnation == 1)
        #expect(lone.core.stats.refutationsWithheld == 0)
    }

    @Test func fortyPercentLossDeclaresNoHealthyMemberDead() {
        var (mesh, addresses) = Mesh.converged(30, settings: .lan)
        mesh.lossRate = 0.4
        mesh.run(for: .seconds(60))
        var deaths = 0
        for observer in addresses {
            for other in addresses where other != observer {
                if mesh.statusChanges(at: observer, of: mesh.node(other).id).contains(where: { $0.2 == .dead }) { deaths += 1 }
            }
        }
        #expect(deaths == 0)
        mesh.lossRate = 0
        mesh.run(for: .seconds(5))
        #expect(mesh.converged())
    }
}

@Suite struct DirectBroadcastTests {
    @Test func aRefutationGoesDirectlyToEveryLiveMember() {
        var lone = LoneCore(peers: [2, 3, 4, 5, 6])
        lone.datagrams = []
        lone.gossip([.update(.suspect(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        let refutation = DatagramMessage.update(LoneCore.selfAlive(incarnation: 1))
        let direct = lone.datagrams.filter { decoded($0.0) == [refutation] }.map(\.1)
        #expect(Set(direct) == Set((2...6).map { LoneCore.address($0) }))
        #expect(direct.count == 5)
    }

    @Test func directBroadcastsAreCappedAtTheLimitAndTheRestIsGossip() {
        var settings = LoneCore.quiet
        settings.directBroadcastLimit = 4
        var lone = LoneCore(peers: (2...11).map { UInt64($0) }, settings: settings)
        lone.datagrams = []
        lone.gossip([.update(.dead(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.datagrams.filter { isUpdateOnly($0.0) }.count == 4)
        #expect(lone.core.pendingUpdates >= 1)
    }

    @Test func aPingFromAMemberWeHoldDeadIsAnsweredWithItsDeath() {
        var lone = LoneCore(peers: [2, 3])
        lone.gossip(LoneCore.killed(2, by: 3), from: 3)
        lone.datagrams = []
        lone.gossip([.ping(seq: 5, target: LoneCore.id(1))], from: 2)
        let ack = decoded(lone.datagrams.last!.0)
        #expect(ack.first == .ack(seq: 5))
        #expect(ack.contains(.update(.dead(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))))
    }

    @Test func aStaleAccusationIsCorrectedDirectlyToWhoeverToldUs() {
        var lone = LoneCore(peers: [2, 3])
        let alive2 = GossipUpdate.alive(id: LoneCore.id(2), incarnation: 1, name: "node-2", address: LoneCore.address(2), metadataVersion: 0, generation: 0)
        lone.gossip([.update(alive2)], from: 2)
        lone.datagrams = []
        // 3 missed 2's refutation: it still accuses 2 at incarnation 0.
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.status(2) == .alive)
        #expect(lone.datagrams.contains { $0.1 == LoneCore.address(3) && decoded($0.0) == [.update(alive2)] })
        // A stale accusation of ourselves: our current alive goes straight back.
        lone.gossip([.update(.suspect(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)  // refuted: 1
        lone.datagrams = []
        lone.gossip([.update(.suspect(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        let current = LoneCore.selfAlive(incarnation: 1)
        #expect(lone.datagrams.map(\.1) == [LoneCore.address(3)])
        #expect(lone.datagrams.first.map { decoded($0.0) } == [.update(current)])
    }

    @Test func gracefulLeaveIsSeenByAllWithinOneDeliveryDelay() {
        var (mesh, addresses) = Mesh.converged(12)
        let leaver = addresses[11]
        let leaverID = mesh.node(leaver).id
        mesh.call(leaver) { $0.leave(now: $1) }
        mesh.run(for: mesh.latency)
        for observer in addresses.dropLast() { #expect(mesh.view(observer)[leaverID] == .left) }
        mesh.crash(leaver)
        mesh.run(for: .seconds(3))
        for observer in addresses.dropLast() { #expect(mesh.statusChanges(at: observer, of: leaverID).map(\.2) == [.left]) }
    }

    @Test func newMetadataIsPulledByAllWithinThreeDeliveryDelays() throws {
        var (mesh, addresses) = Mesh.converged(12)
        let owner = addresses[0]
        let ownerID = mesh.node(owner).id
        let updated = MemberMetadata(zone: "z", clusters: ["db": 1], topics: [], load: 0)
        mesh.perform(try mesh.nodes[owner]!.updateMetadata(updated, now: mesh.now), from: owner)
        mesh.run(for: .milliseconds(3))  // announcement, request, response
        for observer in addresses.dropFirst() { #expect(mesh.node(observer).member(ownerID)?.metadata == updated) }
    }

    @Test func aJoinBurstConvergesWithinAFewDeliveryDelays() {
        var mesh = Mesh()
        let addresses = (1...30).map { mesh.add(UInt16($0)) }
        mesh.joinAll(addresses, seed: addresses[0])
        mesh.run(for: .milliseconds(4))  // request, reply, the joiners' announcements
        #expect(mesh.converged())
    }
}
