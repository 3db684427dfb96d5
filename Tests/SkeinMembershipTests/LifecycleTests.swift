import NIOCore
import Testing

@testable import SkeinMembership
import SkeinTestSupport

@Suite struct LifecycleTests {
    @Test func gracefulLeaveIsSeenAsLeftNeverAsFailure() {
        var (mesh, addresses) = Mesh.converged(4)
        let leaver = addresses[3]
        let leaverID = mesh.node(leaver).id
        mesh.call(leaver) { $0.leave(now: $1) }
        mesh.run(for: .milliseconds(20))
        mesh.crash(leaver)
        mesh.run(for: .seconds(5))
        for observer in addresses.dropLast() {
            #expect(mesh.view(observer)[leaverID] == .left)
            #expect(mesh.statusChanges(at: observer, of: leaverID).map(\.2) == [.left])
        }
    }

    @Test func restartedRelayAtTheSameAddressSupersedesItsOldIdAtOnce() {
        var (mesh, addresses) = Mesh.converged(3)
        let c = addresses[2]
        let oldID = mesh.node(c).id
        mesh.crash(c)
        mesh.add(3, idLow: 33, generation: 1)
        let newID = mesh.node(c).id
        mesh.call(c) { $0.join(seeds: [addresses[0]], now: $1) }
        mesh.run(for: .milliseconds(5))
        #expect(mesh.view(addresses[0])[oldID] == .left)
        #expect(mesh.view(addresses[0])[newID] == .alive)
        mesh.run(for: .seconds(3))
        #expect(mesh.converged())
        for observer in addresses.prefix(2) {
            #expect(mesh.view(observer)[oldID] == .left)
            #expect(!mesh.statusChanges(at: observer, of: oldID).contains { $0.2 == .dead || $0.2 == .suspect })
        }
        #expect(mesh.node(addresses[0]).stats.superseded == 1)
    }

    @Test func sameNameAtTwoAddressesKeepsBothAndReportsTheConflict() {
        var mesh = Mesh()
        let a = mesh.add(1), b = mesh.add(2, name: "twin"), c = mesh.add(3, name: "twin")
        mesh.joinAll([a, b, c], seed: a)
        mesh.run(for: .seconds(2))
        #expect(mesh.converged())
        let conflicts = (mesh.events[a] ?? []).filter { if case .nameConflict = $0.1 { true } else { false } }
        #expect(conflicts.count == 1)
        if case .nameConflict(let existing, let new)? = conflicts.first?.1 {
            #expect(Set([existing.address, new.address]) == [b, c])
            #expect(existing.name == "twin" && new.name == "twin")
        }
        #expect(mesh.view(a).values.filter { $0 == .alive }.count == 3)
    }

    @Test func pushPullMergesTwoSeparateViews() {
        var mesh = Mesh()
        let nodes = (1...4).map { mesh.add(UInt16($0)) }
        mesh.joinAll([nodes[0], nodes[1]], seed: nodes[0])
        mesh.joinAll([nodes[2], nodes[3]], seed: nodes[2])
        mesh.run(for: .seconds(1))
        #expect(mesh.view(nodes[0]).count == 2)
        #expect(mesh.view(nodes[2]).count == 2)
        let attempts = mesh.node(nodes[1]).stats.joinAttempts
        mesh.call(nodes[1]) { $0.join(seeds: [nodes[3]], now: $1) }  // knows someone already: no-op
        #expect(mesh.node(nodes[1]).stats.joinAttempts == attempts)
        // One exchange over the stream channel (what the periodic push-pull sends).
        var records = mesh.node(nodes[0]).stateRecords()
        records.sort { $0.id < $1.id }
        let request = Wire.encodeStream(sender: mesh.node(nodes[0]).id, address: nodes[0], .pushPull(isRequest: true, records: records))
        mesh.call(nodes[3]) { $0.receiveStream(request, from: nodes[0], now: $1) }
        mesh.run(for: .milliseconds(10))
        #expect(mesh.view(nodes[0]).count == 4)
        #expect(mesh.view(nodes[3]).count == 4)
        mesh.run(for: .seconds(2))
        #expect(mesh.converged())
    }

    @Test func partitionedHalvesThatDeclaredEachOtherDeadMergeAgain() {
        var (mesh, addresses) = Mesh.converged(6)
        let left = Array(addresses.prefix(3)), right = Array(addresses.suffix(3))
        mesh.cut(left, right)
        mesh.run(for: .seconds(6))
        for observer in left { for other in right { #expect(mesh.status(of: other, at: observer) == .dead) } }
        for observer in right { for other in left { #expect(mesh.status(of: other, at: observer) == .dead) } }
        mesh.heal()
        mesh.run(for: .seconds(4))
        #expect(mesh.converged())
    }

    @Test func deadAndLeftMembersAreReapedAfterReapAfter() {
        var settings = MembershipSettings.fastLocal
        settings.reapAfter = .seconds(5)
        var (mesh, addresses) = Mesh.converged(3, settings: settings)
        let gone = mesh.node(addresses[2]).id
        mesh.crash(addresses[2])
        mesh.run(for: .seconds(4))
        #expect(mesh.view(addresses[0])[gone] == .dead)
        mesh.run(for: .seconds(5))
        #expect(mesh.view(addresses[0])[gone] == nil)
        #expect((mesh.events[addresses[0]] ?? []).contains { $0.1 == .removed(gone) })
    }
}

@Suite struct MetadataTests {
    /// Larger than `maxInlineMetadataBytes`: announced by version and pulled.
    static let large = MemberMetadata(zone: "z", clusters: ["db": 2], topics: Set((0..<60).map { "topic-\($0)" }), load: 7)

    @Test func smallMetadataRidesInlineSoAJoinAndAChangeNeedNoPull() throws {
        var (mesh, addresses) = Mesh.converged(8)
        let b = addresses[1]
        let bID = mesh.node(b).id
        // Everyone learned everyone's (small) metadata from the join itself.
        for observer in addresses where observer != b { #expect(mesh.node(observer).member(bID)?.metadata == MemberMetadata(zone: "z")) }
        let updated = MemberMetadata(zone: "z", clusters: ["db": 2], topics: ["news"], load: 7)
        #expect(try updated.encoded(limit: 64 * 1024).count <= MembershipSettings.fastLocal.maxInlineMetadataBytes)
        mesh.perform(try mesh.nodes[b]!.updateMetadata(updated, now: mesh.now), from: b)
        mesh.run(for: mesh.latency)  // one delivery: the announcement carries the body
        for observer in addresses where observer != b {
            #expect(mesh.node(observer).member(bID)?.metadata == updated)
            #expect(mesh.node(observer).member(bID)?.metadataVersion == 2)
        }
        #expect(addresses.allSatisfy { mesh.node($0).stats.metadataPullsSent == 0 })
    }

    @Test func newerVersionIsPulledOnceOverTheStreamChannel() throws {
        var (mesh, addresses) = Mesh.converged(3)
        let b = addresses[1]
        let bID = mesh.node(b).id
        #expect(mesh.node(addresses[0]).member(bID)?.metadata == MemberMetadata(zone: "z"))
        let pullsBefore = mesh.node(addresses[0]).stats.metadataPullsSent
        let updated = Self.large
        #expect(try updated.encoded(limit: 64 * 1024).count > MembershipSettings.fastLocal.maxInlineMetadataBytes)
        let directives = try mesh.nodes[b]!.updateMetadata(updated, now: mesh.now)
        mesh.perform(directives, from: b)
        mesh.run(for: .seconds(1))
        for observer in [addresses[0], addresses[2]] {
            let member = mesh.node(observer).member(bID)
            #expect(member?.metadata == updated)
            #expect(member?.metadataVersion == 2)
            #expect((mesh.events[observer] ?? []).contains { if case .metadataChanged(let m) = $0.1 { m.id == bID && m.metadata == updated } else { false } })
        }
        // Gossip repeats the version many times; one pull per version.
        #expect(mesh.node(addresses[0]).stats.metadataPullsSent == pullsBefore + 1)
    }

    @Test func aJoinerPullsOnlyTheLargeBodies() throws {
        var mesh = Mesh()
        let seed = mesh.add(1)
        let large = mesh.add(2, metadata: Self.large)
        let small = mesh.add(3)
        mesh.joinAll([seed, large], seed: seed)
        mesh.run(for: .seconds(1))
        mesh.joinAll([small], seed: seed)
        mesh.run(for: .seconds(1))
        #expect(mesh.node(small).member(mesh.node(large).id)?.metadata == Self.large)
        #expect(mesh.node(small).member(mesh.node(seed).id)?.metadata == MemberMetadata(zone: "z"))
        #expect(mesh.node(small).stats.metadataPullsSent == 1)
    }

    @Test func failedPullRetriesFromAnotherHolder() throws {
        var (mesh, addresses) = Mesh.converged(3)
        let a = addresses[0], b = addresses[1]
        let bID = mesh.node(b).id
        mesh.cutStreams.insert([a, b])
        mesh.perform(try mesh.nodes[b]!.updateMetadata(Self.large, now: mesh.now), from: b)
        mesh.run(for: .seconds(2))
        #expect(mesh.node(a).member(bID)?.metadata == Self.large)
        #expect(mesh.node(a).stats.metadataPullRetries >= 1)
    }

    @Test func metadataSizeLimitIsEnforcedOnEncodeAndDecode() throws {
        let big = MemberMetadata(zone: "z", topics: Set((0..<200).map { "topic-\($0)" }))
        let bytes = try big.encoded(limit: 64 * 1024)
        #expect(throws: MembershipError.metadataTooLarge(size: bytes.count, limit: 100)) { try big.encoded(limit: 100) }
        #expect(MemberMetadata.decode(bytes, limit: 100) == nil)
        #expect(MemberMetadata.decode(bytes, limit: bytes.count) == big)
        var mesh = Mesh()
        let a = mesh.add(1)
        var settings = MembershipSettings.fastLocal
        settings.maxMetadataBytes = 100
        #expect(throws: MembershipError.self) {
            try Membership(id: testNode(9), name: "x", address: a, metadata: big, settings: settings, seed: 1, now: mesh.now)
        }
        #expect(throws: MembershipError.self) { try mesh.nodes[a]!.updateMetadata(MemberMetadata(zone: String(repeating: "z", count: 70_000)), now: mesh.now) }
    }
}

@Suite struct HealthAndDisseminationTests {
    @Test func theHelpersNacksArriveBeforeTheVerdictSoAHealthyProberKeepsItsHealth() {
        var (mesh, addresses) = Mesh.converged(6)
        let prober = addresses[0], stopped = addresses[5]
        mesh.pause(stopped)  // SIGSTOP: no answers, and its stream port still accepts
        let stoppedID = mesh.node(stopped).id
        mesh.call(prober) { $0.linkBroken(stoppedID, now: $1) }  // probe it now
        mesh.run(for: MembershipSettings.fastLocal.probeInterval + .milliseconds(5))
        #expect(mesh.node(prober).stats.nacksReceived >= 3)
        #expect(mesh.node(prober).member(stoppedID)?.status == .suspect)
        #expect(mesh.node(prober).localHealth == 0)
        mesh.resume(stopped)
    }

    @Test func localHealthRisesOnMissedAcksStretchesTheProbeIntervalAndFallsAgain() {
        var (mesh, addresses) = Mesh.converged(4)
        let a = addresses[0]
        // Everything towards a is lost: its probes fail and no nacks come back.
        let healthyRounds = mesh.node(a).stats.probesSent
        mesh.run(for: .seconds(1))
        #expect(mesh.node(a).stats.probesSent - healthyRounds >= 9)
        for other in addresses.dropFirst() { mesh.cutDatagrams.insert([other, a]); mesh.cutStreams.insert([other, a]) }
        mesh.run(for: .seconds(2))
        let health = mesh.node(a).localHealth
        #expect(health >= 3)
        let before = mesh.node(a).stats.probesSent
        mesh.run(for: .seconds(3))
        // Probe rounds are now at least (3 + 1) × 100 ms apart: at most 8 in 3 s, not 30.
        #expect(mesh.node(a).stats.probesSent - before <= 8)
        mesh.cutDatagrams = []
        mesh.run(for: .seconds(10))
        #expect(mesh.node(a).localHealth == 0)
        #expect(mesh.converged())
    }

    @Test func saturatedLocalHealthWithholdsAccusations() {
        var (mesh, addresses) = Mesh.converged(6)
        let a = addresses[0]
        for other in addresses.dropFirst() { mesh.cutDatagrams.insert([other, a]); mesh.cutStreams.insert([other, a]) }
        mesh.run(for: .seconds(10))
        #expect(mesh.node(a).localHealth == MembershipSettings.fastLocal.maxLocalHealth)
        #expect(mesh.node(a).stats.accusationsWithheld > 0)
    }

    @Test func piggybackStaysWithinBudgetAndEachUpdateIsSentLambdaLogNTimes() {
        let peers = (2...200).map { UInt64($0) }
        var lone = LoneCore(peers: peers)
        let n = 200
        let limit = 4 * 3  // λ · ⌈log10(200 + 1)⌉
        #expect(lone.core.retransmitLimit == limit)
        // Every peer learned from the push-pull, and our own alive: joining, we announced
        // ourselves (directly, and queued for gossip).
        #expect(lone.core.pendingUpdates == n)
        var counts: [NodeID: Int] = [:]
        var seq: UInt32 = 0
        while lone.core.pendingUpdates > 0 && seq < 10_000 {
            seq += 1
            lone.datagrams = []
            lone.gossip([.ping(seq: seq, target: LoneCore.id(1))], from: 2)
            let (bytes, _) = lone.datagrams[0]
            #expect(bytes.count <= MembershipSettings.fastLocal.maxDatagramBytes)
            for case .update(let update) in decoded(bytes) { counts[update.id, default: 0] += 1 }
        }
        #expect(counts.count == n)
        #expect(counts.values.allSatisfy { $0 == limit })
        // The same member's newer update replaces the queued one.
        lone.gossip([.update(.suspect(id: LoneCore.id(5), incarnation: 0, accuser: LoneCore.id(2)))], from: 2)
        lone.gossip([.update(.alive(id: LoneCore.id(5), incarnation: 1, name: "node-5", address: LoneCore.address(5), metadataVersion: 0, generation: 0))], from: 2)
        #expect(lone.core.pendingUpdates == 1)
    }
}
