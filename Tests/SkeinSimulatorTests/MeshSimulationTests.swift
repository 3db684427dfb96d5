import NIOCore
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

    @Test("200 seeds, 3 to 6 relays, two faults each: every invariant holds")
    func manySeeds() {
        var requests = 0
        var events = 0
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
        }
        #expect(faultKinds == ["crash-restart", "pause", "partition", "loss"])
        #expect(requests > 50_000 && events > 50_000)
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

    static func client(_ role: SimClient.Role, dialect: ProtocolDialect = .iris) -> SimClient {
        var client = SimClient(index: 3, role: role, slot: 0, process: 1, connection: ConnectionID(1), dialect: dialect)
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
        subscriber.subscribed = true
        checker.received(.publish(topic: "t", event: SimClient.body(sender: 7, sequence: 1)), by: &subscriber, at: 1, pausedRelay: -1)
        checker.received(.publish(topic: "t", event: SimClient.body(sender: 7, sequence: 3)), by: &subscriber, at: 2, pausedRelay: -1)
        #expect(checker.firstViolation == nil && checker.gaps == 1)
        checker.received(.publish(topic: "t", event: SimClient.body(sender: 7, sequence: 3)), by: &subscriber, at: 3, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("doubled or out of order") == true)

        checker = MeshInvariants()
        subscriber.subscribed = false
        checker.received(.publish(topic: "t", event: SimClient.body(sender: 7, sequence: 4)), by: &subscriber, at: 4, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("not subscribed") == true)

        checker = MeshInvariants()
        var requester = Self.client(.requester)
        checker.received(.broadcast(message: SimClient.body(sender: 7, sequence: 1)), by: &requester, at: 1, pausedRelay: -1)
        #expect(checker.firstViolation?.what.contains("no member") == true)
    }
}

