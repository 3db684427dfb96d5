import NIOCore

public enum MemberStatus: String, Sendable {
    case alive, suspect, dead, left
}

/// One row of the membership table, as the rest of the relay sees it.
public struct Member: Sendable, Equatable {
    public var id: NodeID
    public var name: String
    public var address: MemberAddress
    public var status: MemberStatus
    public var incarnation: UInt64
    /// The newest metadata version this member is known to have published.
    public var metadataVersion: UInt64
    /// The newest metadata body held locally: nil until first pulled. While a newer version is
    /// being pulled this is the previous body (`metadataChanged` fires when the new one lands).
    public var metadata: MemberMetadata?

    public init(
        id: NodeID, name: String, address: MemberAddress, status: MemberStatus, incarnation: UInt64,
        metadataVersion: UInt64, metadata: MemberMetadata?
    ) {
        self.id = id
        self.name = name
        self.address = address
        self.status = status
        self.incarnation = incarnation
        self.metadataVersion = metadataVersion
        self.metadata = metadata
    }
}

public enum MembershipEvent: Sendable, Equatable {
    /// A member became known (in any status but left).
    case joined(Member)
    case statusChanged(Member, from: MemberStatus)
    /// A new metadata body was installed for the member.
    case metadataChanged(Member)
    /// The member's record was reaped (dead or left for `reapAfter`).
    case removed(NodeID)
    /// Two live members carry the same name at different addresses. Both are kept; `existing` is
    /// the one known first. Reported once per pair.
    case nameConflict(existing: Member, new: Member)
}

public enum MembershipDirective: Sendable {
    /// Seal and send one UDP datagram.
    case sendDatagram([UInt8], to: MemberAddress)
    /// Send one message over the reliable ordered peer link; call `streamFailed(to:now:refused:)`
    /// if it cannot be delivered.
    case sendStream([UInt8], to: MemberAddress)
    case event(MembershipEvent)
}

/// Counters for observability and tests. All monotonically increasing.
public struct MembershipStats: Sendable, Equatable {
    public var probesSent = 0
    public var acksReceived = 0
    public var nacksReceived = 0
    public var indirectProbesSent = 0
    public var indirectAcksReceived = 0
    public var pingReqsServed = 0
    public var streamPingsSent = 0
    public var streamAcksReceived = 0
    /// Probes started because another member suspected the target.
    public var suspicionProbesSent = 0
    /// Probes whose stream ping was refused (the target's port is closed: its process is gone).
    public var probesRefused = 0
    /// Probes that failed over UDP (direct and indirect) but whose stream ping was answered: the
    /// member is not suspected, and this counter says UDP is broken somewhere.
    public var udpFailedWhileStreamWorked = 0
    public var suspicionsRaised = 0
    /// Suspicions not raised because local health was saturated (see `MembershipSettings.maxLocalHealth`).
    public var accusationsWithheld = 0
    public var suspicionConfirmations = 0
    /// Death verdicts heard about members we held alive, taken as suspicions (see "Healing").
    public var verdictsHeldAsSuspicion = 0
    public var refutations = 0
    /// Accusations of us heard while starving and not refuted (yet): see "Stalls" in Docs/membership.md.
    public var refutationsWithheld = 0
    public var deathsDeclared = 0
    public var deadProbesSent = 0
    /// Dead probes sent, of them, to members dead within `reconnectWindow` (one per probe round).
    public var reconnectProbesSent = 0
    /// Messages (datagrams, stream messages, established links) from members we held dead: each
    /// one's death is told to it at once (a dead probe), so that it refutes.
    public var heardFromTheDead = 0
    /// Full-state exchanges started to mend a view: after we refuted our own death, when a member
    /// we held dead came back, or when an unknown member spoke to us (see "Healing").
    public var repairPushPulls = 0
    public var superseded = 0
    public var reaped = 0
    public var datagramsSent = 0
    public var datagramBytesSent = 0
    public var datagramsReceived = 0
    public var datagramBytesReceived = 0
    public var streamMessagesSent = 0
    public var streamMessagesReceived = 0
    public var streamFailures = 0
    public var updatesPiggybacked = 0
    /// Update-only datagrams of the gossip interval.
    public var gossipDatagramsSent = 0
    /// Datagrams sent directly to every live member (refutation, death verdict, leave, join, metadata).
    public var directBroadcastsSent = 0
    /// Timers that fired more than `probeTimeout` late: this process was not running (paused or
    /// starved), so for one probe interval it accuses no one and declares no one dead.
    public var stalls = 0
    public var malformedDropped = 0
    public var pushPullsSent = 0
    public var pushPullsReceived = 0
    public var joinAttempts = 0
    public var metadataPullsSent = 0
    public var metadataPullsAnswered = 0
    public var metadataPullRetries = 0

    public init() {}
}
