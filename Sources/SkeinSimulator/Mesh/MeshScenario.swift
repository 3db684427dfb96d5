import NIOCore
import SkeinMembership

/// A whole-mesh run: N complete relays (`RelayLoop`s) with simulated clients, on virtual time,
/// over a simulated network (Docs/simulator.md, "The whole mesh").
package struct MeshScenario: Sendable {
    package var relays: Int
    package var seed: UInt64
    /// Virtual seconds of traffic, after `warmup`.
    package var seconds: Double
    /// Virtual seconds before traffic starts (the relays join meanwhile).
    package var warmup: Double = 3
    /// Virtual seconds after traffic stops, for the last answers to arrive.
    package var drain: Double = 3
    package var membership: MembershipSettings = .fastLocal
    package var network = NetworkModel()
    /// Requests per second offered by the whole mesh (one requester per relay).
    package var requestRate: Double = 200
    /// Publishes per second over the whole mesh (a publisher on every third relay).
    package var publishRate: Double = 100
    /// Broadcasts per second over the whole mesh (a broadcaster on every fifth relay).
    package var broadcastRate: Double = 20
    /// 1: one network. 2: the relays split into networks `eu` (the first half) and `us`, each
    /// with its own membership, joined by one gateway link between their first relays, each
    /// exporting cluster `svc` and topic `t` to the other, and nothing else (`MeshFederation`).
    package var networks = 1
    /// Tunnels opened per second over the whole mesh (a tunneler on every fourth relay).
    package var tunnelRate: Double = 4
    /// Messages each tunnel carries before its initiator closes it.
    package var tunnelMessages = 20
    /// After the run, how long the mesh may run on for open tunnels to end (frames a lossy link
    /// holds in retransmission can take seconds).
    package var tunnelSettle: TimeAmount = .seconds(30)
    /// Every subscriber drops and renews its subscription this often (0: never).
    package var resubscribeEvery: Double = 2
    /// The requests' timeout.
    package var requestTimeout: TimeAmount = .milliseconds(1_000)
    /// How long a member takes to answer.
    package var serviceTime: TimeAmount = .microseconds(200)
    /// A peer link across a partition breaks this long after the partition starts (the links'
    /// idle timeout); frames sent on it meanwhile wait, and are lost if it breaks.
    package var linkBreakDelay: TimeAmount = .seconds(3)
    /// A dial that cannot complete (partition, paused peer) fails after this long.
    package var connectTimeout: TimeAmount = .seconds(3)
    /// Faults, in virtual seconds from the start of traffic.
    package var faults: [MeshFault] = []

    package init(relays: Int, seed: UInt64, seconds: Double) {
        self.relays = relays
        self.seed = seed
        self.seconds = seconds
    }

    /// `count` faults drawn from the seed, spread over the first two thirds of the run: crashes
    /// with restart, pauses, partitions into two halves, and loss on one relay.
    package mutating func randomFaults(_ count: Int) {
        var random = SimulationRandom(seed: seed ^ 0xFA17)
        let span = max(seconds * 2 / 3, 1)
        for _ in 0..<count {
            let at = Double.random(in: 0..<span, using: &random)
            let relay = Int.random(in: 0..<relays, using: &random)
            let duration = Double.random(in: 0.5...3, using: &random)
            switch Int.random(in: 0..<4, using: &random) {
            case 0: faults.append(MeshFault(at: at, kind: .crashRestart(relay: relay, downFor: duration)))
            case 1: faults.append(MeshFault(at: at, kind: .pause(relay: relay, duration: duration)))
            case 2:
                var side: [Int] = []
                for slot in 0..<relays where Bool.random(using: &random) { side.append(slot) }
                if side.isEmpty || side.count == relays { side = [relay] }
                faults.append(MeshFault(at: at, kind: .partition(side: side, duration: duration)))
            default:
                faults.append(MeshFault(at: at, kind: .loss(relay: relay, probability: Double.random(in: 0.1...0.5, using: &random), duration: duration)))
            }
        }
        faults.sort { $0.at < $1.at }
    }
}

package struct MeshFault: Sendable, Equatable {
    package var at: Double
    package var kind: Kind

    package enum Kind: Sendable, Equatable {
        /// kill -9, then a fresh process at the same address `downFor` seconds later.
        case crashRestart(relay: Int, downFor: Double)
        /// SIGSTOP, SIGCONT after `duration`.
        case pause(relay: Int, duration: Double)
        /// The relays in `side` cannot reach the others, either way, for `duration`.
        case partition(side: [Int], duration: Double)
        /// Datagrams and link frames to and from the relay are lost with `probability` (the
        /// links retransmit: they are delayed, not lost).
        case loss(relay: Int, probability: Double, duration: Double)
    }

    package init(at: Double, kind: Kind) {
        self.at = at
        self.kind = kind
    }

    var label: String {
        switch kind {
        case .crashRestart(let relay, let downFor): "crash+restart relay-\(relay) for \(format(downFor)) s"
        case .pause(let relay, let duration): "pause relay-\(relay) for \(format(duration)) s"
        case .partition(let side, let duration): "partition \(side.count) relays off for \(format(duration)) s"
        case .loss(let relay, let p, let duration): "loss \(Int(p * 100))% at relay-\(relay) for \(format(duration)) s"
        }
    }

    var kindName: String {
        switch kind {
        case .crashRestart: "crash-restart"
        case .pause: "pause"
        case .partition: "partition"
        case .loss: "loss"
        }
    }
}

func format(_ value: Double) -> String { rounded(value, 2) }
