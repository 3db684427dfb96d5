import NIOCore
import Testing

@testable import SkeinMembership
import SkeinTestSupport

/// A lone core driven by hand: it learns members from a push-pull reply and hears gossip as
/// datagrams, so timings can be checked to the nanosecond. By default it never probes on its own
/// (a probe interval of an hour), so every suspicion and confirmation comes from the test.
struct LoneCore {
    var core: Membership
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var events: [MembershipEvent] = []
    var datagrams: [([UInt8], MemberAddress)] = []
    var streams: [([UInt8], MemberAddress)] = []

    static func id(_ n: UInt64) -> NodeID { testNode(n) }
    static func address(_ n: UInt64) -> MemberAddress { MemberAddress(host: "10.0.0.1", port: UInt16(n)) }

    static var quiet: MembershipSettings {
        var settings = MembershipSettings.fastLocal
        settings.probeInterval = .seconds(3600)
        return settings
    }

    init(peers: [UInt64], settings: MembershipSettings = LoneCore.quiet) {
        core = try! Membership(
            id: Self.id(1), name: "node-1", address: Self.address(1), metadata: MemberMetadata(),
            settings: settings, seed: 42, now: now)
        let records = peers.map { n in
            StateRecord(id: Self.id(n), name: "node-\(n)", address: Self.address(n), status: .alive, incarnation: 0, metadataVersion: 0, generation: 0)
        }
        stream(.pushPull(isRequest: false, records: records), from: peers[0])
    }

    mutating func record(_ directives: [MembershipDirective]) {
        for directive in directives {
            switch directive {
            case .event(let event): events.append(event)
            case .sendDatagram(let bytes, let to): datagrams.append((bytes, to))
            case .sendStream(let bytes, let to): streams.append((bytes, to))
            }
        }
    }

    mutating func stream(_ message: StreamMessage, from n: UInt64) {
        record(core.receiveStream(Wire.encodeStream(sender: Self.id(n), address: Self.address(n), message), from: Self.address(n), now: now))
    }

    mutating func gossip(_ messages: [DatagramMessage], from n: UInt64) {
        record(core.receiveDatagram(Wire.datagram(sender: Self.id(n), messages), from: Self.address(n), now: now))
    }

    /// Time passes continuously: every timer fires at its deadline (a core whose timers fire
    /// late takes it for a stall of its own process).
    mutating func advance(to deadline: NIODeadline) {
        record(core.tick(now: now))
        while core.nextWakeup <= deadline {
            now = max(now, core.nextWakeup)
            record(core.tick(now: now))
        }
        now = deadline
    }

    func status(_ n: UInt64) -> MemberStatus? { core.member(Self.id(n))?.status }

    /// Member `n` suspected, then declared dead, by `accuser`: a death as a core holding `n`
    /// alive accepts it (a bare verdict about a member held alive is only a suspicion).
    static func killed(_ n: UInt64, by accuser: UInt64, incarnation: UInt64 = 0) -> [DatagramMessage] {
        [.update(.suspect(id: id(n), incarnation: incarnation, accuser: id(accuser))),
         .update(.dead(id: id(n), incarnation: incarnation, accuser: id(accuser)))]
    }

    /// Our own `alive` at `incarnation`, as it goes out: with our (empty, so small) metadata inline.
    static func selfAlive(incarnation: UInt64) -> GossipUpdate {
        .alive(
            id: id(1), incarnation: incarnation, name: "node-1", address: address(1), metadataVersion: 1, generation: 0,
            metadata: try! MemberMetadata().encoded(limit: 64 * 1024))
    }
}

@Suite struct SuspicionTests {
    // fastLocal: min = suspicionMinimum = 400 ms; max = 6 × min = 2400 ms; K = min(3, 4 − 2) = 2.
    @Test func suspectWithoutConfirmationDiesAtTheMaximumTimeout() {
        var lone = LoneCore(peers: [2, 3, 4])
        let start = lone.now
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.status(2) == .suspect)
        lone.advance(to: start + .milliseconds(2399))
        #expect(lone.status(2) == .suspect)
        lone.advance(to: start + .milliseconds(2400))
        #expect(lone.status(2) == .dead)
        #expect(lone.core.stats.deathsDeclared == 1)
        #expect(lone.events.contains(.statusChanged(lone.core.member(LoneCore.id(2))!, from: .suspect)))
    }

    @Test func independentConfirmationsShrinkTheTimeoutLogarithmically() {
        var lone = LoneCore(peers: [2, 3, 4])
        let start = lone.now
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        // The same accuser again is not a confirmation.
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.core.stats.suspicionConfirmations == 0)
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(4)))], from: 4)
        #expect(lone.core.stats.suspicionConfirmations == 1)
        // C = 1: 2400 − 2000 · ln 2 / ln 3 = 1138.07… ms, rounded up to the nanosecond.
        let expected = 2_400_000_000 - Int64((2_000_000_000.0 * 0.630_929_753_571_457_4).rounded(.down))
        lone.advance(to: start + .nanoseconds(expected - 1_000))
        #expect(lone.status(2) == .suspect)
        lone.advance(to: start + .nanoseconds(expected + 1_000))
        #expect(lone.status(2) == .dead)
    }

    @Test func confirmationsBeyondKAreNeitherKeptNorRegossiped() {
        var lone = LoneCore(peers: Array(2...10))
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        for accuser in 4...10 as ClosedRange<UInt64> {
            lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(accuser)))], from: accuser)
        }
        let k = MembershipSettings.fastLocal.indirectProbes
        #expect(lone.core.suspicions[LoneCore.id(2)]?.confirmers.count == k)
        #expect(lone.core.stats.suspicionConfirmations == k)
    }

    @Test func enoughConfirmationsReachTheMinimumTimeout() {
        var lone = LoneCore(peers: [2, 3, 4])
        let start = lone.now
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(4)))], from: 4)
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(1)))], from: 4)
        lone.advance(to: start + .milliseconds(399))
        #expect(lone.status(2) == .suspect)
        lone.advance(to: start + .milliseconds(400))
        #expect(lone.status(2) == .dead)
    }

    @Test func aliveWithHigherIncarnationClearsSuspicion() {
        var lone = LoneCore(peers: [2, 3, 4])
        lone.gossip([.update(.suspect(id: LoneCore.id(2), incarnation: 0, accuser: LoneCore.id(3)))], from: 3)
        lone.gossip([.update(.alive(id: LoneCore.id(2), incarnation: 0, name: "node-2", address: LoneCore.address(2), metadataVersion: 0, generation: 0))], from: 2)
        #expect(lone.status(2) == .suspect)  // same incarnation: suspicion wins
        lone.gossip([.update(.alive(id: LoneCore.id(2), incarnation: 1, name: "node-2", address: LoneCore.address(2), metadataVersion: 0, generation: 0))], from: 2)
        #expect(lone.status(2) == .alive)
        lone.advance(to: lone.now + .seconds(3))
        #expect(lone.status(2) == .alive)
    }

    @Test func accusedMemberRefutesWithAHigherIncarnationInItsAck() {
        var lone = LoneCore(peers: [2, 3])
        lone.datagrams = []
        lone.gossip([.ping(seq: 9, target: LoneCore.id(1)), .update(.suspect(id: LoneCore.id(1), incarnation: 0, accuser: LoneCore.id(3)))], from: 2)
        #expect(lone.core.incarnation == 1)
        #expect(lone.core.stats.refutations == 1)
        #expect(lone.core.localHealth == 1)
        let ack = decoded(lone.datagrams.last!.0)
        #expect(ack.first == .ack(seq: 9))
        #expect(ack.contains(.update(LoneCore.selfAlive(incarnation: 1))))
        // Declared dead at the new incarnation: refuted the same way.
        lone.gossip([.update(.dead(id: LoneCore.id(1), incarnation: 1, accuser: LoneCore.id(3)))], from: 3)
        #expect(lone.core.incarnation == 2)
        #expect(lone.core.members.first { $0.id == LoneCore.id(1) }?.status == .alive)
    }

    // The suspect hears the accusation in the first datagram a sends it: the ping of a probe
    // (buddy system) or the gossip round that the new suspicion starts, whichever goes first.
    @Test func buddySystemCarriesTheSuspicionInThePingAndTheAckCarriesTheRefutation() {
        var mesh = Mesh()
        let a = mesh.add(1), b = mesh.add(2), c = mesh.add(3)
        mesh.joinAll([a, b, c], seed: a)
        mesh.run(for: .seconds(2))
        let bID = mesh.node(b).id
        // a hears that b is suspect, from c, while b does not (its inbound gossip is cut).
        mesh.cutDatagrams.insert([c, b])
        mesh.cutDatagrams.insert([a, b])
        let cID = mesh.node(c).id
        // What a sends at once is still in flight when the cut heals below.
        let start = mesh.datagramLog.count
        mesh.call(a) { core, now in
            core.receiveDatagram(Wire.datagram(sender: cID, [.update(.suspect(id: bID, incarnation: 0, accuser: cID))]), from: c, now: now)
        }
        #expect(mesh.status(of: b, at: a) == .suspect)
        mesh.cutDatagrams = []
        mesh.run(for: .milliseconds(250))
        let firstToB = mesh.datagramLog[start...].first { $0.0 == a && $0.1 == b }
        #expect(firstToB.map { decoded($0.2).contains(.update(.suspect(id: bID, incarnation: 0, accuser: cID))) } == true)
        #expect(mesh.node(b).stats.refutations == 1)
        #expect(mesh.status(of: b, at: a) == .alive)
        #expect(mesh.node(a).member(bID)?.incarnation == 1)
    }

    @Test func suspicionOfADeadMemberSpreadsAndEndsInDeathEverywhere() {
        var (mesh, addresses) = Mesh.converged(5)
        let victim = addresses[4]
        let victimID = mesh.node(victim).id
        mesh.crash(victim)
        mesh.run(for: .seconds(5))
        for observer in addresses.dropLast() {
            #expect(mesh.view(observer)[victimID] == .dead)
            let changes = mesh.statusChanges(at: observer, of: victimID).map(\.2)
            #expect(changes == [.suspect, .dead])
        }
        let raised = addresses.dropLast().map { mesh.node($0).stats.suspicionsRaised }.reduce(0, +)
        #expect(raised >= 1)
    }
}
