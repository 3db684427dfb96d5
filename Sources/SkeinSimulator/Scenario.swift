import NIOCore
import SkeinMembership

/// Membership settings a scenario runs with.
package enum SimulationProfile: String, Sendable, CaseIterable {
    /// `MembershipSettings.lan`: 1 s probe interval.
    case lan
    /// `MembershipSettings.fastLocal`: the same protocol at a tenth of the time scale.
    case fast

    package var settings: MembershipSettings {
        switch self {
        case .lan: .lan
        case .fast: .fastLocal
        }
    }
}

/// How the initial members come to know each other before the measured phase.
package enum SimulationBootstrap: String, Sendable, CaseIterable {
    /// Every initial member joins through member 0 at time zero (push-pulls, gossip, metadata
    /// pulls); the measured phase starts once all see all alive. What a mass start costs.
    case joins
    /// Every initial member starts from the converged view (everyone alive, metadata held, no
    /// updates left to spread), as a completed bootstrap leaves it, and the measured phase
    /// starts at once. The members' immutable parts (names, addresses, metadata bodies) are
    /// shared between their cores. How 10,000 members fit one machine; joins are measured by
    /// the scenario's own `join` actions instead.
    case converged
}

/// Something that happens to the simulated mesh at a given time. Members are numbered by slot:
/// the initial members are 0 ..< `Scenario.members`, joiners get the next numbers in order.
package enum SimulationAction: Sendable, Equatable {
    /// The member stops: its input is dropped and it sends nothing, for good.
    case crash(member: Int)
    /// The member stops processing for `duration`, then resumes with its backlog (as SIGSTOP).
    case pause(member: Int, duration: TimeAmount)
    /// Members of different groups cannot reach each other on either channel for `duration`;
    /// members in no group reach everyone.
    case partition(groups: [[Int]], duration: TimeAmount)
    /// `count` new members start and join at once through `seed`.
    case join(count: Int, seed: Int)
    /// Graceful leave, then the process stops.
    case leave(member: Int)
    /// The process stops and a new one (new id, same address and name) starts and joins.
    case restart(member: Int)
    /// The process stops (as `kill -9`), and `downFor` later a new one (new id, same address
    /// and name) starts and joins through the first other live member.
    case crashRestart(member: Int, downFor: TimeAmount)
    /// `probability` of the datagrams to and from the member are lost (on top of the network's
    /// loss), for `duration`; its streams are delayed by TCP-like retransmissions. Loss that
    /// sits on one host rather than spread over all.
    case memberLoss(member: Int, probability: Double, duration: TimeAmount)
    /// The member publishes new metadata.
    case updateMetadata(member: Int)
    /// One random change: a join, a leave, a crash or a restart of a random member (never the seed, member 0).
    case churn
}

package struct ScheduledAction: Sendable, Equatable {
    /// From the start of the measured phase (after the initial members have converged).
    package var at: TimeAmount
    package var action: SimulationAction

    package init(at: TimeAmount, _ action: SimulationAction) {
        self.at = at
        self.action = action
    }
}

/// A simulation: members, settings, network, actions over time, and a seed that makes it exact.
/// Builder style: `Scenario(name: "x", members: 100).loss(0.05).crash(member: 3, at: .seconds(5))`.
///
/// A run has two phases. **Bootstrap** (`bootstrap`): every initial member joins through member 0
/// at time zero and the run waits until all see all alive (at most `bootstrapLimit`), or, with
/// `.converged`, every member starts from the converged view. **Measured**: `duration` long,
/// with the actions at their offsets from its start.
package struct Scenario: Sendable {
    package var name: String
    package var members: Int
    package var settings: MembershipSettings
    package var profile: SimulationProfile
    package var network: NetworkModel
    package var duration: TimeAmount
    package var seed: UInt64
    package var bootstrapLimit: TimeAmount
    package var bootstrap: SimulationBootstrap
    package var actions: [ScheduledAction]

    package init(name: String, members: Int, profile: SimulationProfile = .fast, seconds: Int64 = 10, seed: UInt64 = 1) {
        self.name = name
        self.members = max(1, members)
        self.profile = profile
        self.settings = profile.settings
        self.network = NetworkModel()
        self.duration = .seconds(seconds)
        self.seed = seed
        self.bootstrapLimit = .nanoseconds(profile.settings.probeInterval.nanoseconds * 120)
        self.bootstrap = .joins
        self.actions = []
    }

    package func loss(_ probability: Double) -> Scenario { with { $0.network.datagramLoss = probability } }
    package func delay(_ delay: TimeAmount, jitter: TimeAmount) -> Scenario {
        with {
            $0.network.datagramDelay = delay
            $0.network.datagramJitter = jitter
            $0.network.streamDelay = delay
            $0.network.streamJitter = jitter
        }
    }
    package func network(_ network: NetworkModel) -> Scenario { with { $0.network = network } }
    package func duration(_ duration: TimeAmount) -> Scenario { with { $0.duration = duration } }
    package func seed(_ seed: UInt64) -> Scenario { with { $0.seed = seed } }
    package func bootstrapLimit(_ limit: TimeAmount) -> Scenario { with { $0.bootstrapLimit = limit } }
    package func bootstrap(_ bootstrap: SimulationBootstrap) -> Scenario { with { $0.bootstrap = bootstrap } }
    package func settings(_ settings: MembershipSettings) -> Scenario { with { $0.settings = settings } }
    package func at(_ time: TimeAmount, _ action: SimulationAction) -> Scenario { with { $0.actions.append(ScheduledAction(at: time, action)) } }

    package func crash(member: Int, at time: TimeAmount) -> Scenario { at(time, .crash(member: member)) }
    package func pause(member: Int, at time: TimeAmount, for duration: TimeAmount) -> Scenario { at(time, .pause(member: member, duration: duration)) }
    package func partition(_ groups: [[Int]], at time: TimeAmount, for duration: TimeAmount) -> Scenario {
        at(time, .partition(groups: groups, duration: duration))
    }
    /// Members 0 ..< n/2 against n/2 ..< n.
    package func partitionHalves(at time: TimeAmount, for duration: TimeAmount) -> Scenario {
        partition([Array(0..<(members / 2)), Array((members / 2)..<members)], at: time, for: duration)
    }
    package func join(count: Int, through seed: Int = 0, at time: TimeAmount) -> Scenario { at(time, .join(count: count, seed: seed)) }
    package func leave(member: Int, at time: TimeAmount) -> Scenario { at(time, .leave(member: member)) }
    package func restart(member: Int, at time: TimeAmount) -> Scenario { at(time, .restart(member: member)) }
    package func crashRestart(member: Int, at time: TimeAmount, downFor: TimeAmount) -> Scenario {
        at(time, .crashRestart(member: member, downFor: downFor))
    }
    package func memberLoss(member: Int, _ probability: Double, at time: TimeAmount, for duration: TimeAmount) -> Scenario {
        at(time, .memberLoss(member: member, probability: probability, duration: duration))
    }
    /// One member cut off from all others on both channels.
    package func isolate(member: Int, at time: TimeAmount, for duration: TimeAmount) -> Scenario {
        partition([[member], (0..<members).filter { $0 != member }], at: time, for: duration)
    }
    package func updateMetadata(member: Int, at time: TimeAmount) -> Scenario { at(time, .updateMetadata(member: member)) }
    /// One `churn` step every `interval` from `start` until `end`.
    package func churn(every interval: TimeAmount, from start: TimeAmount, until end: TimeAmount) -> Scenario {
        var copy = self
        var time = start
        while time < end && interval.nanoseconds > 0 {
            copy.actions.append(ScheduledAction(at: time, .churn))
            time = time + interval
        }
        return copy
    }

    private func with(_ change: (inout Scenario) -> Void) -> Scenario {
        var copy = self
        change(&copy)
        return copy
    }

    /// Upper bound of slots (addresses) the run can use: initial members plus every possible joiner.
    var slotCapacity: Int {
        actions.reduce(members) { total, scheduled in
            switch scheduled.action {
            case .join(let count, _): total + max(0, count)
            case .churn: total + 1
            default: total
            }
        }
    }
}

extension Scenario {
    /// The named presets of `skein simulate`.
    package static let presetNames = [
        "steady", "crash", "pause", "partition", "join-burst", "leave", "loss", "churn", "metadata", "restart",
        "isolate", "member-loss", "kill-restart", "heal", "stop12",
    ]

    /// A named preset with `members` members, `seconds` of measured time (nil: the preset's
    /// default, 60 probe intervals or more) and the profile's time scale.
    /// `joiners` is the join-burst size (nil: a fifth of `members`, at least 1).
    package static func preset(
        _ name: String, members: Int, profile: SimulationProfile = .lan, seconds: Double? = nil, seed: UInt64 = 1,
        loss: Double? = nil, joiners: Int? = nil
    ) -> Scenario? {
        let unit = profile.settings.probeInterval.nanoseconds  // one probe interval
        func probes(_ count: Double) -> TimeAmount { .nanoseconds(Int64(count * Double(unit))) }
        let length = seconds.map { TimeAmount.nanoseconds(Int64($0 * 1e9)) } ?? probes(60)
        var scenario = Scenario(name: name, members: members, profile: profile, seed: seed).duration(length)
        if let loss { scenario = scenario.loss(loss) }
        let lengthProbes = Double(length.nanoseconds) / Double(unit)
        let start = probes(min(5, lengthProbes / 10))
        let middle = max(1, members / 2)
        switch name {
        case "steady":
            return scenario
        case "crash":
            return scenario.crash(member: middle % members, at: start)
        case "pause":
            // Long enough to be declared dead (beyond the largest suspicion timeout), then back.
            let suspicionMax = suspicionTimeout(members: members, settings: profile.settings, confirmations: 0)
            return scenario.pause(member: middle % members, at: start, for: suspicionMax + probes(5))
        case "partition":
            return scenario.partitionHalves(at: start, for: probes(max(1, lengthProbes / 3)))
        case "join-burst":
            return scenario.join(count: joiners ?? max(1, members / 5), through: 0, at: start)
        case "leave":
            return scenario.leave(member: middle % members, at: start)
        case "loss":
            return loss == nil ? scenario.loss(0.10) : scenario
        case "churn":
            return scenario.churn(every: probes(3), from: start, until: probes(lengthProbes * 0.8))
        case "metadata":
            return scenario.updateMetadata(member: middle % members, at: start)
        case "restart":
            return scenario.restart(member: middle % members, at: start)
        case "stop12":
            // SIGSTOP for 12 probe intervals (12 s on the LAN), then SIGCONT.
            return scenario.pause(member: middle % members, at: start, for: probes(12))
        case "isolate":
            // One member cut off for 8 probe intervals (8 s on the LAN): long enough to be held
            // dead, and to hold the others dead, on both sides.
            return scenario.isolate(member: middle % members, at: start, for: probes(8))
        case "member-loss":
            // 30 % of one member's datagrams lost both ways for 8 probe intervals (or --loss).
            return Scenario(name: name, members: members, profile: profile, seed: seed).duration(length)
                .memberLoss(member: middle % members, loss ?? 0.30, at: start, for: probes(8))
        case "kill-restart":
            // kill -9, then the same name again once everyone holds the old process dead.
            let suspicionMax = suspicionTimeout(members: members, settings: profile.settings, confirmations: 0)
            return scenario.crashRestart(member: middle % members, at: start, downFor: suspicionMax + probes(3))
        case "heal":
            // Both at once: one member cut off for 8 intervals while another is killed and,
            // 5 intervals later, started again under its name.
            return scenario.isolate(member: middle % members, at: start, for: probes(8))
                .crashRestart(member: (middle + 1) % members, at: start, downFor: probes(5))
        default:
            return nil
        }
    }

    /// Lifeguard's suspicion timeout for `members` live members (see `Docs/membership.md`), used
    /// by presets and tests to pick pauses on either side of it.
    package static func suspicionTimeout(members: Int, settings: MembershipSettings, confirmations: Int) -> TimeAmount {
        // The core's rule (Membership.suspicionMinimum): the base minimum plus one gossip
        // interval per (fanout + 1)-fold of the live members beyond the direct-broadcast limit.
        var reach = settings.directBroadcastLimit
        var rounds = 0
        while reach < members {
            reach *= settings.gossipFanout + 1
            rounds += 1
        }
        let minimum = Double(settings.suspicionMinimum.nanoseconds + Int64(rounds) * settings.gossipInterval.nanoseconds)
        let maximum = minimum * Double(settings.suspicionMaxMultiplier)
        return .nanoseconds(Int64(confirmations >= min(settings.indirectProbes, members - 2) ? minimum : maximum))
    }
}

/// ln(x) for x > 0 without Foundation (the same series as the core's): x = m·2^e,
/// ln x = e·ln 2 + 2·atanh((m−1)/(m+1)).
func naturalLog(_ x: Double) -> Double {
    let y = (x.significand - 1) / (x.significand + 1)
    var term = y
    var sum = 0.0
    var n = 1.0
    while n < 60 {
        sum += term / n
        term *= y * y
        n += 2
    }
    return Double(x.exponent) * 0.693_147_180_559_945_3 + 2 * sum
}
