import NIOCore
import SkeinMembership
import SkeinSimulator
import Testing

/// Properties of the membership protocol at scale, checked on simulated meshes (fast profile,
/// seeded, so every failure replays exactly).
@Suite struct ScenarioTests {
    @Test func crashUnderFivePercentLossIsSeenDeadByAllAndNoLiveMemberDies() {
        var simulation = Simulation(
            Scenario(name: "crash", members: 200, profile: .fast, seconds: 8, seed: 7)
                .loss(0.05)
                .crash(member: 100, at: .milliseconds(200)))
        let report = simulation.run()
        #expect(report.convergence("bootstrap")?.seconds != nil)
        let detection = try! #require(report.crashDetection)
        #expect(detection.observers == 199)
        #expect(detection.seenByAll)
        #expect(report.falseDeaths == 0)
        #expect(report.falseDeathVictims == 0)
    }

    @Test func aConvergedBootstrapStartsAtOnceAndBehavesLikeAJoinedMesh() {
        var simulation = Simulation(
            Scenario(name: "crash", members: 400, profile: .fast, seconds: 6, seed: 7)
                .bootstrap(.converged)
                .loss(0.05)
                .crash(member: 100, at: .milliseconds(200))
                .join(count: 20, through: 0, at: .seconds(3)))
        let report = simulation.run()
        #expect(report.bootstrap == "converged")
        #expect(report.convergence("bootstrap") == nil)
        #expect(simulation.measuredStart == 0)
        let detection = try! #require(report.crashDetection)
        #expect(detection.observers == 399)
        #expect(detection.seenByAll)
        #expect(report.falseDeaths == 0)
        #expect(report.convergence("join")?.seconds != nil)
        #expect(report.membersAtEnd == 419)
    }

    @Test func twoHalvesHealIntoOneViewAfterThePartition() {
        var simulation = Simulation(
            Scenario(name: "partition", members: 20, profile: .fast, seconds: 12, seed: 3)
                .partitionHalves(at: .milliseconds(100), for: .seconds(3)))
        let report = simulation.run()
        // Each half declared the other dead, across the partition only.
        #expect(report.deathsAcrossPartition > 0)
        #expect(report.falseDeaths == 0)
        let heal = try! #require(report.convergence("partition heal"))
        #expect(heal.seconds != nil)
        #expect(report.convergedAtEnd)
        #expect(report.membersAtEnd == 20)
    }

    @Test func fiftyMembersJoiningAtOnceConverge() {
        var simulation = Simulation(
            Scenario(name: "join-burst", members: 20, profile: .fast, seconds: 10, seed: 5)
                .join(count: 50, through: 0, at: .milliseconds(100)))
        let report = simulation.run()
        #expect(report.membersAtEnd == 70)
        #expect(report.convergence("join")?.seconds != nil)
        #expect(report.convergedAtEnd)
        #expect(simulation.members(seenBy: 69)?.filter { $0.status == .alive }.count == 70)
    }

    @Test func pauseShorterThanTheSuspicionTimeoutIsNeverDeclaredDead() {
        let settings = MembershipSettings.fastLocal
        let minimum = Scenario.suspicionTimeout(members: 30, settings: settings, confirmations: 3)
        var simulation = Simulation(
            Scenario(name: "pause", members: 30, profile: .fast, seconds: 5, seed: 11)
                .pause(member: 4, at: .milliseconds(100), for: .nanoseconds(minimum.nanoseconds / 2)))
        let report = simulation.run()
        #expect(report.pausedDeclaredDead == 0)
        #expect(report.falseDeaths == 0)
        #expect(report.convergedAtEnd)
    }

    @Test func pauseLongerThanTheSuspicionTimeoutIsDeclaredDeadThenAliveAgain() {
        let settings = MembershipSettings.fastLocal
        let maximum = Scenario.suspicionTimeout(members: 30, settings: settings, confirmations: 0)
        var simulation = Simulation(
            Scenario(name: "pause", members: 30, profile: .fast, seconds: 15, seed: 11)
                .pause(member: 4, at: .milliseconds(100), for: maximum + .seconds(2)))
        let report = simulation.run()
        #expect(report.pausedDeclaredDead == 29)
        #expect(report.convergence("pause recovery")?.seconds != nil)
        #expect(report.convergedAtEnd)
        let id = simulation.id(of: 4)
        #expect(simulation.members(seenBy: 0)?.first { $0.id == id }?.status == .alive)
    }

    @Test func leaveIsSeenAsLeftByAllAndNeverAsDead() {
        var simulation = Simulation(
            Scenario(name: "leave", members: 40, profile: .fast, seconds: 6, seed: 2)
                .loss(0.02)
                .leave(member: 9, at: .milliseconds(100)))
        let report = simulation.run()
        let detection = try! #require(report.leaveDetection)
        #expect(detection.observers == 39)
        #expect(detection.seenByAll)
        #expect(report.leaversReportedDead == 0)
        #expect(report.convergedAtEnd)
    }

    @Test func restartSupersedesTheOldIdWithoutReportingItDead() {
        var simulation = Simulation(
            Scenario(name: "restart", members: 30, profile: .fast, seconds: 6, seed: 4)
                .restart(member: 12, at: .milliseconds(100)))
        let report = simulation.run()
        let superseded = try! #require(report.supersededDetection)
        #expect(superseded.seenByAll)
        #expect(report.supersededReportedDead == 0)
        #expect(try! #require(report.joinDetection).seenByAll)
        #expect(report.convergence("restart")?.seconds != nil)
        #expect(report.convergedAtEnd)
        #expect(report.membersAtEnd == 30)
    }

    @Test func metadataChangeReachesEveryMember() {
        var simulation = Simulation(
            Scenario(name: "metadata", members: 40, profile: .fast, seconds: 5, seed: 8)
                .updateMetadata(member: 3, at: .milliseconds(100)))
        let report = simulation.run()
        let propagation = try! #require(report.metadataPropagation)
        #expect(propagation.observers == 39)
        #expect(propagation.seenByAll)
        let id = simulation.id(of: 3)
        #expect(simulation.members(seenBy: 20)?.first { $0.id == id }?.metadata?.clusters["svc"] == 1)
    }

    @Test func churnKeepsLiveMembersAliveAndEndsInOneView() {
        var simulation = Simulation(
            Scenario(name: "churn", members: 30, profile: .fast, seconds: 20, seed: 9)
                .churn(every: .milliseconds(500), from: .milliseconds(100), until: .seconds(8)))
        let report = simulation.run()
        #expect(report.falseDeaths == 0)
        #expect(report.leaversReportedDead == 0)
        #expect(report.supersededReportedDead == 0)
        #expect(report.crashDetection?.seenByAll ?? true)
        #expect(report.convergedAtEnd)
    }
}
