import ArgumentParser
import NIOCore
import SkeinSimulator

struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run a membership scenario on many virtual relays in this process, on virtual time.",
        discussion: """
            Scenarios: \(Scenario.presetNames.joined(separator: ", ")). The same seed gives the same run. The metrics and every flag are described in Docs/simulator.md.
            """)

    @Argument(help: "The scenario preset.") var scenario: String
    @Option(help: "Initial members.") var members = 100
    @Option(help: "Datagram loss in percent (0-100).") var loss: Double?
    @Option(name: .customLong("delay-ms"), help: "One-way base delay in milliseconds (both channels).") var delayMilliseconds = 0.25
    @Option(name: .customLong("jitter-ms"), help: "Extra one-way delay, uniform 0...J milliseconds.") var jitterMilliseconds = 0.25
    @Option(help: "Measured virtual seconds (default: 60 probe intervals).") var seconds: Double?
    @Option(help: "Seed of the run.") var seed: UInt64 = 1
    @Option(help: "Membership settings: lan (1 s probes) or fast (100 ms).") var profile = "lan"
    @Option(help: "join-burst: members that join at once (default: a fifth of --members).") var joiners: Int?
    @Option(help: "How the initial members meet: joins (all join member 0, then the run) or converged (start from the converged view).")
    var bootstrap = "joins"
    @Flag(name: .customLong("unreachable-hints"), help: "Datagrams to crashed members produce ICMP-like unreachable hints.")
    var unreachableHints = false
    @Flag(help: "Print the report as one JSON object.") var json = false

    func validate() throws {
        guard Scenario.presetNames.contains(scenario) else {
            throw ValidationError("unknown scenario '\(scenario)'; one of: \(Scenario.presetNames.joined(separator: ", "))")
        }
        guard SimulationProfile(rawValue: profile) != nil else { throw ValidationError("--profile must be lan or fast") }
        guard SimulationBootstrap(rawValue: bootstrap) != nil else { throw ValidationError("--bootstrap must be joins or converged") }
        guard members >= 1 else { throw ValidationError("--members must be at least 1") }
        if let loss, !(0...100).contains(loss) { throw ValidationError("--loss must be within 0...100") }
        guard delayMilliseconds >= 0, jitterMilliseconds >= 0 else { throw ValidationError("delays must not be negative") }
        if let seconds, seconds <= 0 { throw ValidationError("--seconds must be positive") }
        if let joiners, joiners < 1 { throw ValidationError("--joiners must be at least 1") }
    }

    func run() throws {
        guard var scenario = Scenario.preset(
            scenario, members: members, profile: SimulationProfile(rawValue: profile) ?? .lan, seconds: seconds, seed: seed,
            loss: loss.map { $0 / 100 }, joiners: joiners)
        else { throw ExitCode(64) }
        scenario = scenario.delay(.nanoseconds(Int64(delayMilliseconds * 1e6)), jitter: .nanoseconds(Int64(jitterMilliseconds * 1e6)))
        scenario.network.unreachableHints = unreachableHints
        scenario.bootstrap = SimulationBootstrap(rawValue: bootstrap) ?? .joins
        let clock = ContinuousClock()
        let started = clock.now
        var simulation = Simulation(scenario)
        let report = simulation.run()
        let wall = clock.now - started
        let wallSeconds = Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18
        if json {
            print(String(report.json.dropLast()) + ",\"wallSeconds\":\(wallSeconds)}")
        } else {
            print(report.table)
            print("wall time: \(wallSeconds) s")
        }
    }
}
