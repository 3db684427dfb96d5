import NIOCore
import SkeinSimulator
import Testing

@Suite struct DeterminismTests {
    func lossyCrash(seed: UInt64) -> Scenario {
        Scenario(name: "crash", members: 25, profile: .fast, seconds: 4, seed: seed)
            .loss(0.1)
            .delay(.milliseconds(1), jitter: .milliseconds(2))
            .crash(member: 7, at: .milliseconds(300))
    }

    @Test func theSameSeedReplaysTheSameRun() {
        var first = Simulation(lossyCrash(seed: 21))
        var second = Simulation(lossyCrash(seed: 21))
        let a = first.run(), b = second.run()
        #expect(a == b)
        #expect(a.json == b.json)
        #expect(first.stats(of: 3) == second.stats(of: 3))
    }

    @Test func differentSeedsGiveDifferentRuns() {
        var first = Simulation(lossyCrash(seed: 21))
        var second = Simulation(lossyCrash(seed: 22))
        let a = first.run(), b = second.run()
        #expect(a != b)
        #expect(a.datagramsSent != b.datagramsSent || a.crashDetection != b.crashDetection)
    }

    @Test(arguments: Scenario.presetNames)
    func everyPresetBuildsAndRuns(name: String) {
        let scenario = try! #require(Scenario.preset(name, members: 12, profile: .fast, seconds: 3, seed: 1))
        var simulation = Simulation(scenario)
        let report = simulation.run()
        #expect(report.scenario == name)
        #expect(report.convergence("bootstrap")?.seconds != nil)
        #expect(report.json.hasPrefix("{") && report.json.hasSuffix("}"))
        #expect(report.table.contains("false deaths"))
    }

    @Test func anUnknownPresetIsRejected() {
        #expect(Scenario.preset("nope", members: 3) == nil)
    }
}
