import NIOCore
import SkeinMembership
import SkeinRelay
import SkeinWire
import Testing

@testable import SkeinSimulator

/// Whole relays (`RelayLoop`) with clients on a simulated network: every promise is checked at
/// every frame (`MeshInvariants`), under faults drawn from each seed.
@Suite("Whole mesh: relay loops, clients and faults on virtual time")
struct MeshSimulationTests {
    static func scenario(seed: UInt64, relays: Int = 4, faults: Int = 2) -> MeshScenario {
        var scenario = MeshScenario(relays: relays, seed: seed, seconds: 4)
        scenario.warmup = 2
        scenario.drain = 2
        scenario.requestRate = 100
        scenario.publishRate = 50
        scenario.broadcastRate = 10
        scenario.randomFaults(faults)
        return scenario
    }

    @Test("200 seeds, 3 to 6 relays, two faults each, requests, events, broadcasts and tunnels: every invariant holds")
    func manySeeds() {
        var requests = 0
        var events = 0
        var tunnelMessages = 0
        var faultKinds: Set<String> = []
        for seed in UInt64(1)...200 {
            let scenario = Self.scenario(seed: seed, relays: 3 + Int(seed % 4))
            for fault in scenario.faults { faultKinds.insert(fault.kindName) }
            var simulation = MeshSimulation(scenario)
            let report = simulation.run()
            #expect(report.violation == nil, "seed \(seed): \(report.violation?.what ?? "")")
            #expect(report.answers.total + report.pendingAtEnd == report.requests, "seed \(seed)")
            requests += report.requests
            events += report.eventsDelivered
            tunnelMessages += report.tunnels.messagesDelivered
        }
        #expect(faultKinds == ["crash-restart", "pause", "partition", "loss"])
        #expect(requests > 50_000 && events > 50_000 && tunnelMessages > 20_000)
    }

    @Test("60 seeds of two federated networks, 4 to 8 relays, two faults each: every invariant holds, and federation carries traffic")
    func federatedSeeds() {
        var federated = (replies: 0, events: 0, refused: 0)
        for seed in UInt64(1)...60 {
            var scenario = Self.scenario(seed: seed, relays: 4 + Int(seed % 5))
            scenario.networks = 2
            var simulation = MeshSimulation(scenario)
            let report = simulation.run()
            #expect(report.violation == nil, "seed \(seed): \(report.violation?.what ?? "")")
            #expect(report.answers.total + report.pendingAtEnd == report.requests, "seed \(seed)")
            federated.replies += report.federatedReplies
            federated.events += report.federatedEvents
            federated.refused += report.answers.notExported + (report.answers.failures["not exported"] ?? 0)
        }
        #expect(federated.replies > 5_000 && federated.events > 5_000 && federated.refused > 1_000)
    }

    @Test("an event of an unexported topic, and a request from another network to an unexported cluster, are violations")
    func federationChecks() {
        var checker = MeshInvariants()
        var subscriber = Self.client(.subscriber)
        subscriber.topics = ["t", "t@us", "secret@us"]
        checker.received(.publish(topic: "t@us", event: SimClient.body(sender: 7, sequence: 1)), by: &subscriber, at: 1, pausedRelay: -1)
        #expect(checker.firstViolation == nil && checker.federatedEvents == 1)
        checker.received(.publish(topic: "secret@us", event: SimClient.body(sender: 8, sequence: 1)), by: &subscriber, at: 2, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("does not export") == true)

        checker = MeshInvariants()
        var requester = Self.client(.requester)
        let body = SimClient.body(sender: 3, sequence: 1)
        requester.outstanding[1] = .init(body: body, sentAt: 0, deadline: 1_000, cluster: "private@us")
        checker.received(.reply(id: 1, outcome: .success(body)), by: &requester, at: 5, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("which is not exported, was answered by a member") == true)

        // A member of private hears only its own network.
        var scenario = Self.scenario(seed: 1, relays: 4, faults: 0)
        scenario.networks = 2
        var rig = MeshSimulation(scenario)
        rig.relays = [SimRelay(address: MemberAddress(host: "10.0.0.1", port: 7946))]
        rig.relays[0].process = 1
        var member = Self.client(.privateMember, index: 0)
        member.network = "us"
        var foreign = Self.client(.requester, index: 1)
        foreign.network = "eu"
        rig.clients = [member, foreign]
        rig.clientReceived(0, .request(id: 1, body: SimClient.body(sender: 1, sequence: 1), timeoutMillis: 100))
        #expect(rig.invariants.firstViolation?.what.contains("reached cluster private, which us does not export") == true)
    }

    @Test("without faults every request is answered by a member and every event arrives")
    func noFaults() {
        var simulation = MeshSimulation(Self.scenario(seed: 7, relays: 5, faults: 0))
        let report = simulation.run()
        #expect(report.passed)
        #expect(report.requests > 300 && report.answers.replies == report.requests)
        // One subscriber per relay: each event reaches all five, none missed.
        #expect(report.eventsDelivered == 5 * report.publishes && report.gaps == 0)
        #expect(report.aliveViews.seen == report.aliveViews.pairs)
    }

    @Test("the same seed gives the same report, byte for byte")
    func deterministic() {
        var first = MeshSimulation(Self.scenario(seed: 42, relays: 6, faults: 4))
        var second = MeshSimulation(Self.scenario(seed: 42, relays: 6, faults: 4))
        let a = first.run()
        let b = second.run()
        #expect(a.text == b.text && a.json == b.json)
        var other = MeshSimulation(Self.scenario(seed: 43, relays: 6, faults: 4))
        #expect(other.run().json != a.json)
    }

    // The checkers themselves: each broken promise is caught.

    static func client(_ role: SimClient.Role, dialect: ProtocolDialect = .iris, index: Int = 3) -> SimClient {
        var client = SimClient(index: index, role: role, slot: 0, process: 1, connection: ConnectionID(1), dialect: dialect)
        client.open = true
        return client
    }

    @Test("a second answer, a crossed reply, a late one and a skein/1 frame to an Iris client are violations")
    func requestChecks() {
        let body = SimClient.body(sender: 3, sequence: 1)
        var checker = MeshInvariants()
        var client = Self.client(.requester)
        client.outstanding[1] = .init(body: body, sentAt: 0, deadline: 1_000)
        checker.received(.reply(id: 1, outcome: .success(body)), by: &client, at: 500, pausedRelay: -1)
        #expect(checker.firstViolation == nil && checker.answers.replies == 1)
        checker.received(.reply(id: 1, outcome: .timedOut), by: &client, at: 600, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("does not wait for") == true)

        checker = MeshInvariants()
        client.outstanding[2] = .init(body: body, sentAt: 0, deadline: 1_000)
        checker.received(.reply(id: 2, outcome: .success(SimClient.body(sender: 4, sequence: 9))), by: &client, at: 500, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("another request's body") == true)

        checker = MeshInvariants()
        client.outstanding[3] = .init(body: body, sentAt: 0, deadline: 1_000)
        checker.received(.reply(id: 3, outcome: .timedOut), by: &client, at: 1_001, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("after its deadline") == true)
        // Unless the caller's relay was paused meanwhile (its timers could not fire).
        checker = MeshInvariants()
        client.outstanding[4] = .init(body: body, sentAt: 0, deadline: 1_000)
        checker.received(.reply(id: 4, outcome: .timedOut), by: &client, at: 5_000, pausedRelay: 2_000)
        #expect(checker.firstViolation == nil)

        checker = MeshInvariants()
        client.outstanding[5] = .init(body: body, sentAt: 0, deadline: 1_000)
        checker.received(.requestFailed(id: 5, reason: .memberLost, detail: ""), by: &client, at: 10, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("skein/1 failure") == true)
    }

    @Test("a doubled, reordered or unsubscribed event, and a broadcast to a non-member, are violations")
    func deliveryChecks() {
        var checker = MeshInvariants()
        var subscriber = Self.client(.subscriber)
        subscriber.topics = ["t"]
        checker.received(.publish(topic: "t", event: SimClient.body(sender: 7, sequence: 1)), by: &subscriber, at: 1, pausedRelay: -1)
        checker.received(.publish(topic: "t", event: SimClient.body(sender: 7, sequence: 3)), by: &subscriber, at: 2, pausedRelay: -1)
        #expect(checker.firstViolation == nil && checker.gaps == 1)
        checker.received(.publish(topic: "t", event: SimClient.body(sender: 7, sequence: 3)), by: &subscriber, at: 3, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("doubled or out of order") == true)

        checker = MeshInvariants()
        subscriber.topics = []
        checker.received(.publish(topic: "t", event: SimClient.body(sender: 7, sequence: 4)), by: &subscriber, at: 4, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("not subscribed") == true)

        checker = MeshInvariants()
        var requester = Self.client(.requester)
        checker.received(.broadcast(message: SimClient.body(sender: 7, sequence: 1)), by: &requester, at: 1, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("no member") == true)
    }

    /// A simulation with one relay slot (no loop: what clients send goes nowhere) and `client`.
    static func tunnelRig(_ client: SimClient) -> MeshSimulation {
        var simulation = MeshSimulation(Self.scenario(seed: 1, relays: 1, faults: 0))
        simulation.relays = [SimRelay(address: MemberAddress(host: "10.0.0.1", port: 7946))]
        simulation.relays[0].process = 1
        simulation.clients = [client]
        return simulation
    }

    static func message(_ sequence: UInt64) -> RelayFrame {
        .tunnelTransfer(tunnelID: 1, sizeOrContinuation: 24, chunk: SimTunnels.message(client: 9, tunnel: 4, sequence: sequence))
    }

    @Test("a lost, doubled or overflowing tunnel message, a short graceful close and an end left open are violations")
    func tunnelChecks() {
        let member = Self.client(.member, index: 0)
        var rig = Self.tunnelRig(member)
        rig.tunnelFrame(0, .tunnelInit(buildID: 5, chunkLimit: 1 << 16))
        #expect(rig.clients[0].tunnels.accepted[1] != nil)
        rig.tunnelFrame(0, Self.message(1))
        rig.tunnelFrame(0, Self.message(2))
        #expect(rig.invariants.firstViolation == nil && rig.report.tunnels.messagesDelivered == 2)
        rig.tunnelFrame(0, Self.message(4))
        #expect(rig.invariants.firstViolation?.what.contains("lost, doubled or out of order") == true)

        rig = Self.tunnelRig(member)
        rig.tunnelFrame(0, .tunnelInit(buildID: 5, chunkLimit: 1 << 16))
        rig.tunnelFrame(0, Self.message(1))
        rig.tunnelFrame(0, .tunnelClose(tunnelID: 1, reason: ""))
        #expect(rig.invariants.firstViolation?.what.contains("closed gracefully after 1 of 20") == true)

        rig = Self.tunnelRig(member)
        rig.tunnelFrame(0, .tunnelInit(buildID: 5, chunkLimit: 1 << 16))
        rig.clients[0].tunnels.accepted[1]!.window = 10
        rig.tunnelFrame(0, Self.message(1))
        #expect(rig.invariants.firstViolation?.what.contains("with a window of 10") == true)

        // A failed tunnel is fine; one still open long after the run is not.
        rig = Self.tunnelRig(member)
        rig.tunnelFrame(0, .tunnelInit(buildID: 5, chunkLimit: 1 << 16))
        rig.tunnelFrame(0, .tunnelInit(buildID: 6, chunkLimit: 1 << 16))
        rig.tunnelFrame(0, .tunnelClose(tunnelID: 1, reason: "the relay at the other end was lost"))
        #expect(rig.invariants.firstViolation == nil && rig.report.tunnels.failedAtMember == 1)
        rig.time = 100_000_000_000
        rig.checkTunnelsEnded()
        #expect(rig.invariants.firstViolation?.what.contains("tunnel 2 (no message yet, 0 messages) still open at its member") == true)

        // An initiator's tunnel closed gracefully by nobody.
        let tunneler = Self.client(.tunneler, index: 0)
        rig = Self.tunnelRig(tunneler)
        rig.clients[0].tunnels.initiated[1] = .open(allowance: 0, sent: 3, since: 0)
        rig.tunnelFrame(0, .tunnelClose(tunnelID: 1, reason: ""))
        #expect(rig.invariants.firstViolation?.what.contains("neither end closed it") == true)
    }

    @Test("without faults every tunnel is built, completes, and delivers every message")
    func tunnelsWithoutFaults() {
        var simulation = MeshSimulation(Self.scenario(seed: 11, relays: 6, faults: 0))
        let report = simulation.run()
        #expect(report.passed)
        #expect(report.tunnels.opened > 10)
        #expect(report.tunnels.built == report.tunnels.opened && report.tunnels.completed == report.tunnels.opened)
        #expect(report.tunnels.messagesDelivered == 20 * report.tunnels.opened && report.tunnels.openAtEnd == 0)
    }
}

