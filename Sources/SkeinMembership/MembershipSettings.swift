import NIOCore

/// Every tunable of the membership core. `Docs/membership.md` lists each with its reasoning.
public struct MembershipSettings: Sendable {
    /// Time between probes of successive members, scaled by `localHealth + 1`.
    public var probeInterval: TimeAmount
    /// How long a direct ping may go unanswered before indirect probes (and the stream ping) go
    /// out; scaled by `localHealth + 1`. Must be below `probeInterval`.
    public var probeTimeout: TimeAmount
    /// k: members asked to ping a target that did not answer directly.
    public var indirectProbes: Int
    /// Lifeguard: minimum suspicion timeout = this × max(1, log10 n) × probeInterval.
    public var suspicionMinMultiplier: Int
    /// Lifeguard: maximum suspicion timeout = this × minimum timeout (before any confirmation).
    public var suspicionMaxMultiplier: Int
    /// λ: each update is piggybacked λ·⌈log10(n + 1)⌉ times.
    public var retransmitMultiplier: Int
    /// Payload budget of one datagram before sealing (sealing adds about 57 bytes).
    public var maxDatagramBytes: Int
    /// Time between full-state exchanges with one random live member.
    public var pushPullInterval: TimeAmount
    /// Time between pings to one dead member (round-robin), so healed partitions merge.
    public var deadProbeInterval: TimeAmount
    /// Dead and left records are forgotten this long after their last change.
    public var reapAfter: TimeAmount
    /// Upper bound of an encoded `MemberMetadata`, enforced on encode and decode.
    public var maxMetadataBytes: Int
    /// Lifeguard LHM ceiling. At the ceiling this member raises no new suspicions.
    public var maxLocalHealth: Int
    /// First delay between join attempts; doubles per attempt up to `joinRetryMaxInterval`.
    public var joinRetryInterval: TimeAmount
    public var joinRetryMaxInterval: TimeAmount
    /// How long a metadata pull may take before it is retried (from another holder if known).
    public var metadataPullTimeout: TimeAmount
    /// Pull attempts for one metadata version before it is left to the next gossip of it.
    public var metadataPullAttempts: Int

    public init(
        probeInterval: TimeAmount, probeTimeout: TimeAmount, indirectProbes: Int,
        suspicionMinMultiplier: Int, suspicionMaxMultiplier: Int, retransmitMultiplier: Int,
        maxDatagramBytes: Int, pushPullInterval: TimeAmount, deadProbeInterval: TimeAmount,
        reapAfter: TimeAmount, maxMetadataBytes: Int, maxLocalHealth: Int,
        joinRetryInterval: TimeAmount, joinRetryMaxInterval: TimeAmount,
        metadataPullTimeout: TimeAmount, metadataPullAttempts: Int
    ) {
        self.probeInterval = probeInterval
        self.probeTimeout = probeTimeout
        self.indirectProbes = indirectProbes
        self.suspicionMinMultiplier = suspicionMinMultiplier
        self.suspicionMaxMultiplier = suspicionMaxMultiplier
        self.retransmitMultiplier = retransmitMultiplier
        self.maxDatagramBytes = maxDatagramBytes
        self.pushPullInterval = pushPullInterval
        self.deadProbeInterval = deadProbeInterval
        self.reapAfter = reapAfter
        self.maxMetadataBytes = maxMetadataBytes
        self.maxLocalHealth = maxLocalHealth
        self.joinRetryInterval = joinRetryInterval
        self.joinRetryMaxInterval = joinRetryMaxInterval
        self.metadataPullTimeout = metadataPullTimeout
        self.metadataPullAttempts = metadataPullAttempts
    }

    /// A LAN or data-centre network (memberlist's LAN profile where the two overlap).
    /// 1350-byte datagrams + ~57 sealing + 48 IPv6/UDP headers = 1455 ≤ 1500 MTU, with 45 bytes
    /// to spare for an overlay (VXLAN, WireGuard) on the path.
    public static let lan = MembershipSettings(
        probeInterval: .seconds(1), probeTimeout: .milliseconds(500), indirectProbes: 3,
        suspicionMinMultiplier: 4, suspicionMaxMultiplier: 6, retransmitMultiplier: 4,
        maxDatagramBytes: 1350, pushPullInterval: .seconds(30), deadProbeInterval: .seconds(10),
        reapAfter: .hours(1), maxMetadataBytes: 64 * 1024, maxLocalHealth: 8,
        joinRetryInterval: .seconds(1), joinRetryMaxInterval: .seconds(30),
        metadataPullTimeout: .seconds(5), metadataPullAttempts: 3
    )

    /// Loopback and tests: the same protocol at roughly a tenth of the LAN time scale.
    public static let fastLocal = MembershipSettings(
        probeInterval: .milliseconds(100), probeTimeout: .milliseconds(40), indirectProbes: 3,
        suspicionMinMultiplier: 4, suspicionMaxMultiplier: 6, retransmitMultiplier: 4,
        maxDatagramBytes: 1350, pushPullInterval: .seconds(2), deadProbeInterval: .milliseconds(500),
        reapAfter: .seconds(60), maxMetadataBytes: 64 * 1024, maxLocalHealth: 8,
        joinRetryInterval: .milliseconds(100), joinRetryMaxInterval: .seconds(2),
        metadataPullTimeout: .milliseconds(500), metadataPullAttempts: 3
    )
}
