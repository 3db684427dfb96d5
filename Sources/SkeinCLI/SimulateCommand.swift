import ArgumentParser
import NIOCore
import SkeinSimulator

struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Run a membership scenario, or a whole mesh with traffic, on many virtual relays in this process, on virtual time.",
        discussion: """
            Membership scenarios: \(Scenario.presetNames.joined(separator: ", ")). `mesh` runs complete relays (relay core, membership, routing) with clients sending requests, events and broadcasts, checks every promise at every frame, and exits 1 when one breaks, naming the seed and the first violating event. The same seed gives the same run (and the same output). The metrics and every flag are described in Docs/simulator.md.
            """)

    @Argument(help: "The scenario: mesh, or a membership preset.") var scenario: String
    @Option(help: "Initial members.") var members = 100
    @Option(help: "mesh: relays.") var relays = 5
    @Option(help: "mesh: faults drawn from the seed (crash and restart, pause, partition, loss on one relay).") var faults = 0
    @Option(help: "mesh: 1, or 2 for two federated networks (eu and us, half the relays each, one gateway link).") var networks = 1
    @Option(name: .customLong("request-rate"), help: "mesh: requests per second over the whole mesh.") var requestRate = 200.0
    @Option(name: .customLong("publish-rate"), help: "mesh: publishes per second over the whole mesh.") var publishRate = 100.0
    @Option(name: .customLong("broadcast-rate"), help: "mesh: broadcasts per second over the whole mesh.") var broadcastRate = 20.0
    @Option(name: .customLong("timeout-ms"), help: "mesh: the requests' timeout in milliseconds.") var timeoutMilliseconds = 1_000
    @Option(help: "Datagram loss in percent (0-100).") var loss: Double?
    @Option(name: .customLong("delay-ms"), help: "One-way base delay in milliseconds (both channels).") var delayMilliseconds = 0.25
    @Option(name: .customLong("jitter-ms"), help: "Extra one-way delay, uniform 0...J milliseconds.") var jitterMilliseconds = 0.25
    @Option(help: "Measured virtual seconds (default: 60 probe intervals).") var seconds: Double?
    @Option(help: "Seed of the run.") var seed: UInt64 = 1
    @Option(help: "Membership settings: lan (1 s probes) or fast (100 ms; the default for mesh).") var profile: String?
    @Option(help: "join-burst: members that join at once (default: a fifth of --members).") var joiners: Int?
    @Option(help: "How the initial members meet: joins (all join member 0, then the run) or converged (start from the converged view).")
    var bootstrap = "joins"
    @Flag(name: .customLong("unreachable-hints"), help: "Datagrams to crashed members produce ICMP-like unreachable hints.")
    var unreachableHints = false
    @Flag(help: "Print the report as one JSON object.") var json = false

    func validate() throws {
        guard scenario == "mesh" || Scenario.presetNames.contains(scenario) else {
            throw ValidationError("unknown scenario '\(scenario)'; one of: mesh, \(Scenario.presetNames.joined(separator: ", "))")
        }
        if let profile, SimulationProfile(rawValue: profile) == nil { throw ValidationError("--profile must be lan or fast") }
        guard relays >= 1, relays <= 100_000 else { throw ValidationError("--relays must be within 1...100000") }
        guard faults >= 0 else { throw ValidationError("--faults must not be negative") }
        guard networks == 1 || networks == 2 else { throw ValidationError("--networks must be 1 or 2") }
        guard networks == 1 || relays >= 4 else { throw ValidationError("--networks 2 needs at least 4 relays (two per network)") }
        guard requestRate >= 0, publishRate >= 0, broadcastRate >= 0 else { throw ValidationError("rates must not be negative") }
        guard timeoutMilliseconds >= 1 else { throw ValidationError("--timeout-ms must be at least 1") }
        if scenario == "mesh" {
            guard members == 100, joiners == nil, bootstrap == "joins", !unreachableHints else {
                throw ValidationError("--members, --joiners, --bootstrap and --unreachable-hints are for membership scenarios; mesh takes --relays")
            }
        } else {
            guard relays == 5, faults == 0, networks == 1, requestRate == 200, publishRate == 100, broadcastRate == 20, timeoutMilliseconds == 1_000 else {
                throw ValidationError("--relays, --faults, --networks, the rates and --timeout-ms are for `skein simulate mesh`")
            }
        }
        guard SimulationBootstrap(rawValue: bootstrap) != nil else { throw ValidationError("--bootstrap must be joins or converged") }
        guard members >= 1 else { throw ValidationError("--members must be at least 1") }
        if let loss, !(0...100).contains(loss) { throw ValidationError("--loss must be within 0...100") }
        guard delayMilliseconds >= 0, jitterMilliseconds >= 0 else { throw ValidationError("delays must not be negative") }
        if let seconds, seconds <= 0 { throw ValidationError("--seconds must be positive") }
        if let joiners, joiners < 1 { throw ValidationError("--joiners must be at least 1") }
    }

    func run() throws {
        if scenario == "mesh" { return try runMesh() }
        guard var scenario = Scenario.preset(
            scenario, members: members, profile: profile.flatMap(SimulationProfile.init(rawValue:)) ?? .lan, seconds: seconds, seed: seed,
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

    /// `skein simulate mesh`: the report on stdout (identical for one seed), wall time on stderr.
    func runMesh() throws {
        var mesh = MeshScenario(relays: relays, seed: seed, seconds: seconds ?? 10)
        mesh.membership = (profile.flatMap(SimulationProfile.init(rawValue:)) ?? .fast).settings
        if profile == "lan" { mesh.warmup = 15 }
        mesh.network.datagramLoss = (loss ?? 0) / 100
        let delay = TimeAmount.nanoseconds(Int64(delayMilliseconds * 1e6))
        let jitter = TimeAmount.nanoseconds(Int64(jitterMilliseconds * 1e6))
        mesh.network.datagramDelay = delay
        mesh.network.datagramJitter = jitter
        mesh.network.streamDelay = delay
        mesh.network.streamJitter = jitter
        mesh.networks = networks
        mesh.requestRate = requestRate
        mesh.publishRate = publishRate
        mesh.broadcastRate = broadcastRate
        mesh.requestTimeout = .milliseconds(Int64(timeoutMilliseconds))
        mesh.randomFaults(faults)
        let clock = ContinuousClock()
        let started = clock.now
        var simulation = MeshSimulation(mesh)
        let report = simulation.run()
        let wall = clock.now - started
        print(json ? report.json : report.text)
        printError("wall time: \(Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18) s")
        if !report.passed { throw ExitCode(1) }
    }
}
