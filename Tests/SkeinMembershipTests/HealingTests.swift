import NIOCore
import Testing

@testable import SkeinMembership

/// Issue 17: a live member held dead is found again within about a probe interval, by the rules
/// of "Healing" in Docs/membership.md. Each rule is checked on a lone core driven by hand.
@Suite struct HealingTests {
    static func pings(_ lone: LoneCore, to n: UInt64) -> [[DatagramMessage]] {
        lone.datagrams.filter { $0.1 == LoneCore.address(n) }.map { decoded($0.0) }.filter {
            $0.contains { if case .ping(_, let target) = $0 { target == LoneCore.id(n) } else { false } }
        }
    }

    static func carriesDeath(_ messages: [DatagramMessage], of n: UInt64) -> Bool {
        messages.contains { if case .update(.dead(let id, _, _)) = $0 { id == LoneCore.id(n) } else { false } }
    }

    static func pushPulls(_ lone: LoneCore, to n: UInt64) -> Int {
        lone.streams.filter { bytes, to in
            guard to == LoneCore.address(n), let (_, _, message) = Wire.decodeStream(bytes, maxMetadataBytes: 64 * 1024) else { return false }
            if case .pushPull(true, _, _) = message { return true }
            return false
        }.count
    }

    @Test func aVerdictAboutAMemberHeldAliveIsOnlyASuspicion() {
        var lone = LoneCore(peers: [2, 3, 4])
        lone.gossip([.update(.dead(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.status(2) == .suspect)
        #expect(lone.core.stats.verdictsHeldAsSuspicion == 1)
        // Its refutation, before our timer runs out, keeps it alive: never dead.
        let refutation = GossipUpdate.alive(id: LoneCore.id(2), incarnation: 1, name: "node-2", address: LoneCore.address(2), metadataVersion: 0, generation: 0)
        lone.gossip([.update(refutation)], from: 2)
        #expect(lone.status(2) == .alive)
        #expect(!lone.events.contains { if case .statusChanged(let m, _) = $0 { m.status == .dead } else { false } })
    }

    @Test func aVerdictAboutAMemberHeldAliveStillKillsOneThatNeverRefutes() {
        var lone = LoneCore(peers: [2, 3, 4])
        lone.gossip([.update(.dead(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        // A second verdict from another member is a confirmation: the timeout shrinks.
        lone.gossip([.update(.dead(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(4)))], from: 4)
        lone.advance(to: lone.now + .milliseconds(2_400))
        #expect(lone.status(2) == .dead)
    }

    @Test func aVerdictAboutASuspectIsAcceptedAtOnce() {
        var lone = LoneCore(peers: [2, 3])
        lone.gossip(LoneCore.killed(2, by: 3), from: 3)
        #expect(lone.status(2) == .dead)
    }

    @Test func membersDeadWithinTheReconnectWindowGetADeadProbeEveryProbeRound() {
        var settings = MembershipSettings.fastLocal
        settings.deadProbeInterval = .seconds(3600)  // only the reconnect probes remain
        settings.maxLocalHealth = 0  // unanswered probes of member 3 must not stretch the rounds
        var lone = LoneCore(peers: [2, 3], settings: settings)
        lone.gossip(LoneCore.killed(2, by: 3), from: 3)
        lone.datagrams = []
        lone.advance(to: lone.now + .seconds(1))  // ten probe rounds of 100 ms
        let probes = Self.pings(lone, to: 2)
        #expect(probes.count >= 9)
        #expect(probes.allSatisfy { Self.carriesDeath($0, of: 2) })
        #expect(lone.core.stats.reconnectProbesSent >= probes.count)
        // Beyond the window (6 s in fastLocal), no more of them.
        lone.advance(to: lone.now + settings.reconnectWindow)
        lone.datagrams = []
        lone.advance(to: lone.now + .seconds(1))
        #expect(Self.pings(lone, to: 2).isEmpty)
    }

    @Test func anyDatagramFromAMemberHeldDeadIsAnsweredWithADeadProbe() {
        var lone = LoneCore(peers: [2, 3])
        lone.gossip(LoneCore.killed(2, by: 3), from: 3)
        lone.datagrams = []
        // Gossip from it (not a ping to us): it runs, and has not heard of its death.
        lone.gossip([.update(.left(id: LoneCore.id(9), incarnation: 0))], from: 2)
        let probes = Self.pings(lone, to: 2)
        #expect(probes.count == 1)
        #expect(Self.carriesDeath(probes[0], of: 2))
        #expect(lone.core.stats.heardFromTheDead == 1)
        // One at a time: a second message within the probe does not send another.
        lone.gossip([.update(.left(id: LoneCore.id(9), incarnation: 0))], from: 2)
        #expect(Self.pings(lone, to: 2).count == 1)
    }

    @Test func anEstablishedLinkToAMemberHeldDeadIsEvidenceToo() {
        var lone = LoneCore(peers: [2, 3])
        lone.gossip(LoneCore.killed(2, by: 3), from: 3)
        lone.datagrams = []
        lone.record(lone.core.linkEstablished(LoneCore.id(2), now: lone.now))
        #expect(Self.pings(lone, to: 2).count == 1)
        // Alive members: nothing to do.
        lone.datagrams = []
        lone.record(lone.core.linkEstablished(LoneCore.id(3), now: lone.now))
        #expect(lone.datagrams.isEmpty)
    }

    @Test func refutingOurDeathReachesTheMembersWeHoldDeadAndRepairsWithTheTeller() {
        var lone = LoneCore(peers: [2, 3, 4])
        lone.gossip(LoneCore.killed(4, by: 3), from: 3)  // we hold 4 dead (the far side, say)
        lone.datagrams = []
        lone.streams = []
        lone.gossip([.update(.dead(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 2)
        let refutation = DatagramMessage.update(LoneCore.selfAlive(incarnation: 1))
        let direct = Set(lone.datagrams.filter { decoded($0.0).contains(refutation) }.map(\.1))
        #expect(direct == Set([2, 3, 4].map { LoneCore.address($0) }))
        #expect(Self.pushPulls(lone, to: 2) == 1)
        #expect(lone.core.stats.repairPushPulls == 1)
    }

    @Test func aMemberBackFromTheDeadGetsARepairPushPullAtMostOncePerProbeInterval() {
        var lone = LoneCore(peers: [2, 3, 4], settings: .fastLocal)
        lone.gossip(LoneCore.killed(2, by: 3) + LoneCore.killed(4, by: 3), from: 3)
        lone.streams = []
        for (n, incarnation) in [(2, 1), (4, 1)] as [(UInt64, UInt64)] {
            let alive = GossipUpdate.alive(
                id: LoneCore.id(n), incarnation: incarnation, name: "node-\(n)", address: LoneCore.address(n), metadataVersion: 0, generation: 0)
            lone.gossip([.update(alive)], from: n)
        }
        #expect(lone.status(2) == .alive && lone.status(4) == .alive)
        #expect(Self.pushPulls(lone, to: 2) == 1)
        #expect(Self.pushPulls(lone, to: 4) == 0)  // within the same probe interval
    }

    @Test func aDatagramFromAnUnknownMemberStartsAPushPullWithIt() {
        var lone = LoneCore(peers: [2, 3])
        lone.streams = []
        lone.gossip([.update(.left(id: LoneCore.id(9), incarnation: 0))], from: 7)
        #expect(Self.pushPulls(lone, to: 7) == 1)
    }
}
