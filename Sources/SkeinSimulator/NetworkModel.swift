import NIOCore

/// How the virtual network treats the two channels. Loss and delay apply per message; partitions,
/// crashes and pauses are scenario actions (see `Scenario`).
package struct NetworkModel: Sendable, Equatable {
    /// Probability that one datagram is lost, 0 … 1.
    package var datagramLoss: Double
    /// One-way datagram latency: `datagramDelay` plus a uniform draw in 0 … `datagramJitter`.
    package var datagramDelay: TimeAmount
    package var datagramJitter: TimeAmount
    /// One-way stream latency: `streamDelay` plus a fixed per-pair share of `streamJitter`
    /// (fixed so that the stream stays ordered per pair, as TCP is).
    package var streamDelay: TimeAmount
    package var streamJitter: TimeAmount
    /// How long a sender waits to hear that a stream message could not be delivered (crashed
    /// destination or a partition between the two).
    package var streamFailureDelay: TimeAmount
    /// A datagram to a crashed member produces an `unreachable` hint at the sender (as an ICMP
    /// port-unreachable would). Off by default: many networks drop ICMP.
    package var unreachableHints: Bool

    package init(
        datagramLoss: Double = 0, datagramDelay: TimeAmount = .microseconds(250), datagramJitter: TimeAmount = .microseconds(250),
        streamDelay: TimeAmount = .microseconds(500), streamJitter: TimeAmount = .microseconds(250),
        streamFailureDelay: TimeAmount = .milliseconds(1), unreachableHints: Bool = false
    ) {
        self.datagramLoss = datagramLoss
        self.datagramDelay = datagramDelay
        self.datagramJitter = datagramJitter
        self.streamDelay = streamDelay
        self.streamJitter = streamJitter
        self.streamFailureDelay = streamFailureDelay
        self.unreachableHints = unreachableHints
    }
}
