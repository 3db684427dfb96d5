/// SplitMix64: the simulator's own randomness (loss, jitter, ids, churn choices), separate from
/// each core's seeded generator so that network draws never shift a core's probe order.
struct SimulationRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    mutating func unit() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Uniform in [0, bound] nanoseconds; 0 when `bound` is not positive.
    mutating func nanoseconds(upTo bound: Int64) -> Int64 {
        bound > 0 ? Int64(next() % UInt64(bound + 1)) : 0
    }
}

/// A fixed pseudo-random value per (from, to) pair: the stream channel's per-pair latency, so
/// that messages of one pair never overtake each other (TCP is ordered) without any per-pair state.
func pairHash(_ from: Int, _ to: Int, seed: UInt64) -> UInt64 {
    var random = SimulationRandom(seed: seed ^ (UInt64(truncatingIfNeeded: from) << 32) ^ UInt64(truncatingIfNeeded: to))
    return random.next()
}
