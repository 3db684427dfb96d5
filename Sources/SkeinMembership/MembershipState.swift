import HeapModule
import NIOCore

/// Lifeguard's dynamic suspicion timeout for one suspect.
struct Suspicion: Sendable {
    var start: NIODeadline
    var incarnation: UInt64
    /// Distinct members (other than the first accuser) that independently suspected it.
    var confirmers: Set<NodeID>
    var firstAccuser: NodeID
    var expectedConfirmations: Int
    var minimum: TimeAmount
    var maximum: TimeAmount
    /// Raised by another member's death verdict about a member we held alive (see `apply`):
    /// further verdicts are only confirmations, never a death of their own.
    var fromVerdict = false

    /// timeout(C) = max(min, max − (max − min) · log(C + 1) / log(K + 1)).
    var timeout: TimeAmount {
        let k = expectedConfirmations
        guard k >= 1 else { return minimum }
        let c = Double(confirmers.count)
        let span = Double(maximum.nanoseconds - minimum.nanoseconds)
        let shrunk = Double(maximum.nanoseconds) - span * naturalLog(c + 1) / naturalLog(Double(k) + 1)
        return .nanoseconds(max(minimum.nanoseconds, Int64(shrunk.rounded(.up))))
    }

    var deadline: NIODeadline { start + timeout }
}

/// ln(x) for x > 0 without Foundation: x = m·2^e, ln x = e·ln 2 + 2·atanh((m−1)/(m+1)).
func naturalLog(_ x: Double) -> Double {
    precondition(x > 0)
    let exponent = Double(x.exponent)
    let mantissa = x.significand  // [1, 2)
    let y = (mantissa - 1) / (mantissa + 1)
    let y2 = y * y
    var term = y
    var sum = 0.0
    var n = 1.0
    while n < 60 {
        sum += term / n
        term *= y2
        n += 2
    }
    return exponent * 0.693_147_180_559_945_3 + 2 * sum
}

func log10Ceiling(_ value: Int) -> Int {
    var digits = 0
    var power = 1
    while power < value {
        power *= 10
        digits += 1
    }
    return digits
}

enum ProbeKind: Sendable {
    /// The round-robin probe of the cycle.
    case regular
    /// Out of cycle, on a `linkBroken`/`unreachable` hint: same lifecycle as `regular`.
    case hint
    /// Out of cycle, because others suspect the target: if it fails too, our own suspicion is an
    /// independent confirmation. Same lifecycle as `regular`.
    case suspicion
    /// A ping to a member believed dead, carrying its death so it can refute.
    case dead
}

struct Probe: Sendable {
    var target: NodeID
    var kind: ProbeKind
    var indirectSent = false
    var expectedNacks = 0
    var nacks = 0
    var streamAcked = false
    /// The target's stream port refused our stream ping: its process is gone.
    var refused = false
}

/// We are the intermediary of someone's indirect probe.
struct RelayedProbe: Sendable {
    var requesterSeq: UInt32
    var requester: MemberAddress
    var nackSent = false
}

struct Broadcast: Sendable {
    var update: GossipUpdate
    var transmits: Int
    var order: UInt64
}

/// Heap key: fewest transmits first, then newest.
struct BroadcastKey: Comparable, Sendable {
    var transmits: Int
    var order: UInt64
    var id: NodeID

    static func < (lhs: BroadcastKey, rhs: BroadcastKey) -> Bool {
        if lhs.transmits != rhs.transmits { return lhs.transmits < rhs.transmits }
        return lhs.order > rhs.order
    }
}

struct MetadataPull: Sendable {
    var version: UInt64
    var attempt: Int
    /// Members' addresses that claimed to have the version; the owner first.
    var sources: [MemberAddress]
    var deadline: NIODeadline
    /// The source of the outstanding attempt.
    var current: MemberAddress
    /// Sources asked since the last timeout: a "not held" from them may change only with time.
    var asked: Set<MemberAddress> = []
    /// Sources whose stream failed during this pull: skipped while any other is left.
    var unreachable: Set<MemberAddress> = []
    /// The current attempt failed early and no other source was worth asking at once: the
    /// next new source is asked at once, else the timer retries.
    var waiting = false
}

enum TimerKind: Sendable {
    case probeRound
    case probeIndirect(UInt32)
    case probeEnd(UInt32)
    case suspicion(NodeID)
    case relayNack(UInt32)
    case relayEnd(UInt32)
    case pushPull
    case gossip
    case deadProbe
    case joinRetry
    case metadataPull(NodeID)
    /// A starving member may refute the death it heard (see `Membership.heardAccusation`).
    case releaseWithheldDeath
    /// Runs for a while after a stall: its lateness tells a starved process from a paused one.
    case stallWatch
    case reap(NodeID)
}

/// Entries are never removed early: each is checked against current state when it fires.
struct Timer: Comparable, Sendable {
    var deadline: NIODeadline
    var order: UInt64
    var kind: TimerKind

    static func < (lhs: Timer, rhs: Timer) -> Bool {
        (lhs.deadline, lhs.order) < (rhs.deadline, rhs.order)
    }

    static func == (lhs: Timer, rhs: Timer) -> Bool {
        lhs.deadline == rhs.deadline && lhs.order == rhs.order
    }
}
