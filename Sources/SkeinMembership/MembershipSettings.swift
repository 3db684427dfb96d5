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
    /// Lifeguard's minimum suspicion timeout for a suspicion resting on timeouts only (which is
    /// what a paused process looks like): long enough that a member paused for up to ~2 s (LAN)
    /// refutes before anyone's timer runs out. Beyond `directBroadcastLimit` members one gossip
    /// round per fanout-fold of the rest is added. See `Docs/membership.md`, "Suspicion".
    public var suspicionMinimum: TimeAmount
    /// The minimum when we saw the target's stream port refuse a connection ourselves (the
    /// process is gone: a stopped process's kernel still accepts).
    public var refusedSuspicionMinimum: TimeAmount
    /// Lifeguard: maximum suspicion timeout = this × `suspicionMinimum` (before any confirmation).
    public var suspicionMaxMultiplier: Int
    /// λ: each update is piggybacked λ·⌈log10(n + 1)⌉ times.
    public var retransmitMultiplier: Int
    /// Payload budget of one datagram before sealing (sealing adds about 57 bytes).
    public var maxDatagramBytes: Int
    /// Time between full-state exchanges with one random live member, for up to 32 live members;
    /// scaled by ⌈log2(n / 32)⌉ + 1 beyond (memberlist's pushPullScale).
    public var pushPullInterval: TimeAmount
    /// While updates are queued, one update-only datagram goes to `gossipFanout` random members
    /// this often (the first at once after an idle spell). Nothing is sent when the queue is empty.
    public var gossipInterval: TimeAmount
    public var gossipFanout: Int
    /// Dead members stay gossip targets this long after their death, so a falsely dead member
    /// (a paused process) hears it and refutes.
    public var gossipToTheDead: TimeAmount
    /// News that ends or avoids a wrong verdict (a refutation, our own death verdict, a leave,
    /// our first appearance, new metadata) is sent directly to up to this many live members;
    /// the rest hear it by gossip.
    public var directBroadcastLimit: Int
    /// Time between pings to one dead member (round-robin), so healed partitions merge.
    public var deadProbeInterval: TimeAmount
    /// Members dead for less than this are probed more often: one of them (round-robin) with
    /// every probe round, so that a healed partition or a falsely dead member is found again
    /// within about a probe interval from both sides (Serf's reconnect, in seconds). They are
    /// also told directly of our refutations. Beyond it, `deadProbeInterval` applies.
    public var reconnectWindow: TimeAmount = .seconds(60)
    /// Dead and left records are forgotten this long after their last change.
    public var reapAfter: TimeAmount
    /// Upper bound of an encoded `MemberMetadata`, enforced on encode and decode.
    public var maxMetadataBytes: Int
    /// Metadata bodies up to this size ride inline in `alive` updates (gossip, direct
    /// announcements) and in a joiner's push-pull, so nobody pulls them; larger ones are pulled
    /// over the stream channel. The largest `alive` (255-byte host and name) plus 512 bytes of
    /// metadata still fits one `maxDatagramBytes` datagram.
    public var maxInlineMetadataBytes = 512
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
        suspicionMinimum: TimeAmount, refusedSuspicionMinimum: TimeAmount, suspicionMaxMultiplier: Int,
        retransmitMultiplier: Int, maxDatagramBytes: Int, pushPullInterval: TimeAmount,
        gossipInterval: TimeAmount, gossipFanout: Int, gossipToTheDead: TimeAmount, directBroadcastLimit: Int,
        deadProbeInterval: TimeAmount,
        reapAfter: TimeAmount, maxMetadataBytes: Int, maxLocalHealth: Int,
        joinRetryInterval: TimeAmount, joinRetryMaxInterval: TimeAmount,
        metadataPullTimeout: TimeAmount, metadataPullAttempts: Int
    ) {
        self.probeInterval = probeInterval
        self.probeTimeout = probeTimeout
        self.indirectProbes = indirectProbes
        self.suspicionMinimum = suspicionMinimum
        self.refusedSuspicionMinimum = refusedSuspicionMinimum
        self.suspicionMaxMultiplier = suspicionMaxMultiplier
        self.retransmitMultiplier = retransmitMultiplier
        self.maxDatagramBytes = maxDatagramBytes
        self.pushPullInterval = pushPullInterval
        self.gossipInterval = gossipInterval
        self.gossipFanout = gossipFanout
        self.gossipToTheDead = gossipToTheDead
        self.directBroadcastLimit = directBroadcastLimit
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
    /// Timings are reasoned out in `Docs/membership.md`, "Settings".
    public static let lan = MembershipSettings(
        probeInterval: .seconds(1), probeTimeout: .milliseconds(500), indirectProbes: 3,
        suspicionMinimum: .seconds(2), refusedSuspicionMinimum: .seconds(1), suspicionMaxMultiplier: 6,
        retransmitMultiplier: 4, maxDatagramBytes: 1350, pushPullInterval: .seconds(30),
        gossipInterval: .milliseconds(200), gossipFanout: 3, gossipToTheDead: .seconds(5), directBroadcastLimit: 128,
        deadProbeInterval: .seconds(10),
        reapAfter: .hours(1), maxMetadataBytes: 64 * 1024, maxLocalHealth: 8,
        joinRetryInterval: .seconds(1), joinRetryMaxInterval: .seconds(30),
        metadataPullTimeout: .seconds(5), metadataPullAttempts: 3
    )

    /// Loopback and tests: the same protocol at roughly a tenth of the LAN time scale, except the
    /// plain suspicion minimum (400 ms, not 200): scheduler stalls of a loaded test machine do not
    /// shrink with the profile, and a stalled relay must not be declared dead.
    public static let fastLocal: MembershipSettings = {
        var settings = MembershipSettings(
            probeInterval: .milliseconds(100), probeTimeout: .milliseconds(50), indirectProbes: 3,
            suspicionMinimum: .milliseconds(400), refusedSuspicionMinimum: .milliseconds(100), suspicionMaxMultiplier: 6,
            retransmitMultiplier: 4, maxDatagramBytes: 1350, pushPullInterval: .seconds(2),
            gossipInterval: .milliseconds(20), gossipFanout: 3, gossipToTheDead: .milliseconds(500), directBroadcastLimit: 128,
            deadProbeInterval: .milliseconds(500),
            reapAfter: .seconds(60), maxMetadataBytes: 64 * 1024, maxLocalHealth: 8,
            joinRetryInterval: .milliseconds(100), joinRetryMaxInterval: .seconds(2),
            metadataPullTimeout: .milliseconds(500), metadataPullAttempts: 3
        )
        settings.reconnectWindow = .seconds(6)
        return settings
    }()
}
