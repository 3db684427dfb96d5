import SkeinMembership
import SkeinRouting
import Testing
import SkeinTestSupport

func node(_ n: UInt64) -> NodeID { testNode(n) }

func relay(_ n: UInt64, zone: String = "", clusters: [String: UInt32] = [:], topics: Set<String> = [], load: UInt32 = 0) -> RemoteRelay {
    RemoteRelay(id: node(n), name: "r\(n)", zone: zone, clusters: clusters, topics: topics, load: load)
}

@Suite("Routing table")
struct RoutingTableTests {
    @Test("clusters and topics index the relays that serve them, and follow updates and removals")
    func indexes() {
        var table = RoutingTable(seed: 1)
        table.update(relay(1, clusters: ["echo": 2], topics: ["news"]))
        table.update(relay(2, clusters: ["echo": 1, "db": 1]))
        #expect(Set(table.relays(servingCluster: "echo")) == [node(1), node(2)])
        #expect(table.relays(servingCluster: "db") == [node(2)])
        #expect(table.relays(subscribedTo: "news") == [node(1)])
        let before = table.version
        table.update(relay(2, clusters: ["db": 1], topics: ["news"]))
        #expect(table.version > before)
        #expect(table.relays(servingCluster: "echo") == [node(1)])
        #expect(Set(table.relays(subscribedTo: "news")) == [node(1), node(2)])
        table.remove(node(1))
        #expect(table.relays(servingCluster: "echo").isEmpty)
        #expect(table.relays(subscribedTo: "news") == [node(2)])
    }

    @Test("patterns index relays by what they match; a relay matching twice is named once; removal forgets them")
    func patterns() {
        var table = RoutingTable(seed: 1)
        table.update(RemoteRelay(id: node(1), name: "r1", zone: "", clusters: [:], topics: ["a.b"], load: 0, patterns: ["a.*", "a.>"]))
        table.update(RemoteRelay(id: node(2), name: "r2", zone: "", clusters: [:], topics: [], load: 0, patterns: ["*.b", "a.*@us"]))
        #expect(table.relays(subscribedTo: "a.b") == [node(1), node(2)])
        #expect(table.relays(subscribedTo: "a.c.d") == [node(1)])
        #expect(table.relays(subscribedTo: "x.b") == [node(2)])
        #expect(table.relays(subscribedTo: "a.x@us") == [node(2)], "another network's patterns match its topics only")
        #expect(table.relays(subscribedTo: "a") == [])
        #expect(table.subscribedPatterns == ["a.*", "a.>", "*.b", "a.*@us"])
        table.suspend(node(2))
        #expect(table.relays(subscribedTo: "x.b") == [node(2)], "suspended relays still get events for their patterns")
        table.remove(node(2))
        table.update(RemoteRelay(id: node(1), name: "r1", zone: "", clusters: [:], topics: [], load: 0, patterns: ["a.>"]))
        #expect(table.relays(subscribedTo: "a.b") == [node(1)] && table.relays(subscribedTo: "x.b") == [])
        table.remove(node(1))
        #expect(table.relays(subscribedTo: "a.b.c") == [] && table.subscribedPatterns.isEmpty)
    }

    @Test("a suspended relay gets no requests but still gets events and broadcasts (issue 17)")
    func suspendedRelaysStillGetFanOut() {
        var table = RoutingTable(seed: 1)
        table.update(relay(1, clusters: ["echo": 1], topics: ["news"]))
        table.update(relay(2, clusters: ["echo": 1], topics: ["news"]))
        table.suspend(node(2))
        // Requests: only the usable relay.
        for _ in 0..<20 { #expect(table.pick(cluster: "echo", inFlight: { _ in 0 }) == node(1)) }
        #expect(table.relays(servingCluster: "echo") == [node(1)])
        // Fan-out: both; a suspect relay's subscribers and members want every event.
        #expect(table.relays(subscribedTo: "news") == [node(1), node(2)])
        #expect(table.relays(broadcastingTo: "echo") == [node(1), node(2)])
        #expect(table.relays(subscribedTo: "other").isEmpty)
        // Removed (dead, left): gone from both, and the version moves (fan-out caches follow it).
        let before = table.version
        table.remove(node(2))
        #expect(table.version > before)
        #expect(table.relays(subscribedTo: "news") == [node(1)])
        #expect(table.relays(broadcastingTo: "echo") == [node(1)])
        // Back (update): once, not twice.
        table.update(relay(2, clusters: ["echo": 1], topics: ["news"]))
        table.suspend(node(2))
        table.update(relay(2, clusters: ["echo": 1], topics: ["news"]))
        #expect(Set(table.relays(subscribedTo: "news")) == [node(1), node(2)])
        #expect(table.relays(subscribedTo: "news").count == 2)
    }

    @Test("an identical update changes nothing, not even the version")
    func idempotent() {
        var table = RoutingTable(seed: 1)
        table.update(relay(1, clusters: ["echo": 1]))
        let version = table.version
        table.update(relay(1, clusters: ["echo": 1]))
        #expect(table.version == version)
    }

    @Test("a cluster nobody serves has no destination; excluded relays are skipped")
    func noDestination() {
        var table = RoutingTable(seed: 1)
        #expect(table.pick(cluster: "echo", inFlight: { _ in 0 }) == nil)
        table.update(relay(1, clusters: ["echo": 1]))
        #expect(table.pick(cluster: "echo", inFlight: { _ in 0 }) == node(1))
        #expect(table.pick(cluster: "echo", excluding: [node(1)], inFlight: { _ in 0 }) == nil)
    }

    @Test("relays in the local zone are preferred while one serves the cluster")
    func zonePreference() {
        var table = RoutingTable(localZone: "eu", seed: 7)
        table.update(relay(1, zone: "us", clusters: ["echo": 1]))
        table.update(relay(2, zone: "eu", clusters: ["echo": 1]))
        for _ in 0..<100 { #expect(table.pick(cluster: "echo", inFlight: { _ in 0 }) == node(2)) }
        table.policy.preferZone = false
        let picks = (0..<200).map { _ in table.pick(cluster: "echo", inFlight: { _ in 0 })! }
        #expect(Set(picks) == [node(1), node(2)])
    }

    @Test("power of two choices sends to the relay with fewer requests in flight")
    func leastInFlight() {
        var table = RoutingTable(seed: 3)
        table.update(relay(1, clusters: ["echo": 1]))
        table.update(relay(2, clusters: ["echo": 1]))
        for _ in 0..<50 {
            #expect(table.pick(cluster: "echo", inFlight: { $0 == node(1) ? 10 : 2 }) == node(2))
        }
    }

    @Test("with equal load, picks spread evenly over many relays", arguments: [2, 3, 8])
    func spread(relays: Int) {
        var table = RoutingTable(seed: 42)
        for i in 1...relays { table.update(relay(UInt64(i), clusters: ["echo": 1])) }
        var inFlight: [NodeID: Int] = [:]
        var counts: [NodeID: Int] = [:]
        // Every request takes 20 steps to answer, wherever it goes.
        var finishing: [(step: Int, relay: NodeID)] = []
        let total = 6000
        for step in 0..<total {
            while let first = finishing.first, first.step <= step {
                inFlight[first.relay]! -= 1
                finishing.removeFirst()
            }
            let choice = table.pick(cluster: "echo", inFlight: { inFlight[$0, default: 0] })!
            counts[choice, default: 0] += 1
            inFlight[choice, default: 0] += 1
            finishing.append((step + 20, choice))
        }
        let expected = Double(total) / Double(relays)
        for i in 1...relays {
            let share = Double(counts[node(UInt64(i)), default: 0])
            #expect(abs(share - expected) / expected < 0.1, "relay \(i): \(share) of \(total)")
        }
    }

    @Test("the same seed makes the same choices")
    func deterministic() {
        func run() -> [NodeID] {
            var table = RoutingTable(seed: 99)
            for i in 1...5 { table.update(relay(UInt64(i), clusters: ["echo": 1])) }
            return (0..<50).map { _ in table.pick(cluster: "echo", inFlight: { _ in 0 })! }
        }
        #expect(run() == run())
    }
}
