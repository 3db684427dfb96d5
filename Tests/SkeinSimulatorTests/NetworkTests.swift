import NIOCore
import SkeinSimulator
import Testing

@Suite struct NetworkTests {
    @Test func totalLossMakesEveryDatagramLostButStreamsStillJoin() {
        var simulation = Simulation(Scenario(name: "steady", members: 5, profile: .fast, seconds: 1, seed: 1).loss(1))
        let report = simulation.run()
        #expect(report.datagramsSent > 0)
        #expect(report.datagramsLost == report.datagramsSent)
        // Probes fail over UDP but their stream pings work: nobody is suspected.
        #expect(report.falseSuspicions == 0)
        #expect((simulation.stats(of: 0)?.udpFailedWhileStreamWorked ?? 0) > 0)
    }

    @Test func streamsToACrashedMemberFailBackToTheSender() {
        var simulation = Simulation(
            Scenario(name: "crash", members: 6, profile: .fast, seconds: 3, seed: 2).crash(member: 2, at: .milliseconds(50)))
        let report = simulation.run()
        #expect(report.streamFailures > 0)
        #expect(report.crashDetection?.seenByAll == true)
    }

    @Test func unreachableHintsLeaveVerdictsToTheProbe() {
        var network = NetworkModel()
        network.unreachableHints = true
        var simulation = Simulation(
            Scenario(name: "crash", members: 6, profile: .fast, seconds: 3, seed: 2).network(network).crash(member: 2, at: .milliseconds(50)))
        let report = simulation.run()
        // A hint starts a probe at once; the verdict still needs the probe and the suspicion.
        #expect(report.crashDetection?.seenByAll == true)
        #expect(report.falseDeaths == 0)
    }

    @Test func restBandwidthIsMeasuredBeforeTheFirstAction() {
        var simulation = Simulation(Scenario(name: "steady", members: 10, profile: .fast, seconds: 2, seed: 1))
        let report = simulation.run()
        let datagram = try! #require(report.datagramBytesPerMemberPerSecond)
        // About ten probes a second, each a ping and an ack of at least 17 + 21 bytes.
        #expect(datagram > 10 * (17 + 21))
        #expect(datagram < 10 * 2 * 1400 * 4)
    }
}
