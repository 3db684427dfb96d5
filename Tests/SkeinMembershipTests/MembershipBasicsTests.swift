import NIOCore
import Testing

@testable import SkeinMembership

@Suite struct ProbeTests {
    @Test func joinConvergesAndProbesAreAcked() {
        let (mesh, addresses) = Mesh.converged(5)
        #expect(mesh.converged())
        for address in addresses {
            let stats = mesh.node(address).stats
            #expect(stats.probesSent > 10)
            #expect(stats.acksReceived >= stats.probesSent - 1)
            #expect(stats.suspicionsRaised == 0)
            #expect(mesh.node(address).localHealth == 0)
        }
    }

    @Test func probeOrderVisitsEveryMemberOncePerRound() {
        var (mesh, addresses) = Mesh.converged(6)
        let start = mesh.datagramLog.count
        mesh.run(for: .milliseconds(500))  // five rounds of 100 ms: each of 5 peers exactly once
        let pings = mesh.datagramLog[start...].filter { entry in
            entry.0 == addresses[0] && decoded(entry.2).contains { if case .ping = $0 { true } else { false } }
        }
        let targets = pings.map(\.1.port)
        #expect(targets.count == 5)
        #expect(Set(targets).count == 5)
    }

    @Test func indirectProbeSucceedsWhenTheDirectPathIsCut() {
        var (mesh, addresses) = Mesh.converged(4)
        let a = addresses[0], b = addresses[1]
        mesh.cutDatagrams.insert([a, b])
        mesh.cutDatagrams.insert([b, a])
        mesh.run(for: .seconds(2))
        #expect(mesh.node(a).stats.indirectAcksReceived > 0)
        #expect(mesh.node(addresses[2]).stats.pingReqsServed + mesh.node(addresses[3]).stats.pingReqsServed > 0)
        #expect(mesh.statusChanges(at: a, of: mesh.node(b).id).isEmpty)
        #expect(mesh.status(of: b, at: a) == .alive)
    }

    @Test func fastFailureHintProbesAtOnceButIsNoDeathSentence() {
        var (mesh, addresses) = Mesh.converged(3)
        let a = addresses[0], b = addresses[1]
        let bID = mesh.node(b).id
        mesh.run(for: .milliseconds(50))  // between rounds: no probe of b outstanding
        let directives = mesh.nodes[a]!.linkBroken(bID, now: mesh.now)
        let pings = directives.compactMap { directive -> MemberAddress? in
            if case .sendDatagram(let bytes, let to) = directive,
               decoded(bytes).contains(where: { if case .ping(_, let target) = $0 { target == bID } else { false } })
            { return to }
            return nil
        }
        #expect(pings == [b])
        #expect(directives.allSatisfy { if case .event = $0 { false } else { true } })
        mesh.perform(directives, from: a)
        mesh.run(for: .seconds(1))
        #expect(mesh.status(of: b, at: a) == .alive)
        // Hint about a member that really is gone: still only suspicion after a failed probe.
        // The direct ping times out at 50 ms; the stream ping then sent is refused (b's port is
        // closed) 1 ms later, which ends the probe at once instead of at 100 ms.
        mesh.crash(b)
        mesh.call(a) { $0.unreachable(b, now: $1) }
        mesh.run(for: .milliseconds(50))
        #expect(mesh.view(a)[bID] == .alive)
        mesh.run(for: .milliseconds(2))
        #expect(mesh.view(a)[bID] == .suspect)
        #expect(mesh.node(a).stats.probesRefused == 1)
    }

    @Test func streamAckWithoutUDPCountsAndDoesNotSuspect() {
        var (mesh, addresses) = Mesh.converged(3)
        let b = addresses[1]
        for other in addresses where other != b { mesh.cutDatagrams.insert([other, b]) }
        mesh.run(for: .seconds(2))
        let total = addresses.map { mesh.node($0).stats.udpFailedWhileStreamWorked }.reduce(0, +)
        #expect(total > 0)
        #expect(mesh.node(addresses[0]).stats.udpFailedWhileStreamWorked > 0)
        for observer in addresses {
            for other in addresses { #expect(mesh.status(of: other, at: observer) == .alive) }
            #expect(mesh.node(observer).stats.suspicionsRaised == 0)
        }
    }

    @Test func joinRetriesWithBackoffUntilTheSeedAnswers() {
        var mesh = Mesh()
        let a = mesh.add(1)
        let seed = Mesh.address(2)
        mesh.call(a) { $0.join(seeds: [seed, a], now: $1) }
        mesh.run(for: .milliseconds(650))
        // Backoff 100, 200, 400 ms: attempts at 0, 100 and 300 ms.
        #expect(mesh.node(a).stats.joinAttempts == 3)
        #expect(mesh.node(a).stats.streamFailures == 3)
        mesh.add(2)
        mesh.run(for: .seconds(1))
        #expect(mesh.converged())
        #expect(mesh.nodes.count == 2)
    }
}
