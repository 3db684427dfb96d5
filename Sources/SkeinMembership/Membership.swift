import HeapModule
import NIOCore

/// The SWIM + Lifeguard membership core: a value type with no I/O, no clock and no randomness of
/// its own. Every input takes `now`; every output is a `MembershipDirective` the shell performs.
/// The shell calls `tick(now:)` at or after `nextWakeup`. See `Docs/membership.md`.
public struct Membership: Sendable {
    public let id: NodeID
    public let name: String
    public let address: MemberAddress
    public let settings: MembershipSettings
    /// Orders processes that used the same address; see `init`.
    public let generation: UInt64

    var selfIncarnation: UInt64 = 0
    var selfMetadataVersion: UInt64 = 1
    var selfMetadata: MemberMetadata
    var selfMetadataBytes: [UInt8]
    var hasLeft = false

    let selfIdentity: MemberIdentity
    var table = MemberTable()
    /// Who raised the current suspicion or death of a member (buddy system, dead probes).
    var accusers: [NodeID: NodeID] = [:]
    /// When we last started a probe of a member (regular, hint or suspicion-triggered), for
    /// the last `probeInterval` only (see `probeOnSuspicion`).
    var lastProbed: [NodeID: NIODeadline] = [:]
    /// Members declared dead within `gossipToTheDead` (still gossip targets), oldest first.
    var recentlyDead: [NodeID] = []
    /// Members declared dead within `reconnectWindow`, oldest first: probed one per probe
    /// round, and told of our refutations (see "Healing" in Docs/membership.md).
    var reconnecting: [NodeID] = []
    var reconnectIndex = 0
    /// The last repair push-pull (at most one per probe interval; see `repair`).
    var lastRepairAt: NIODeadline?
    var reportedConflicts: Set<[NodeID]> = []
    var suspicions: [NodeID: Suspicion] = [:]
    var random: MembershipRandom

    /// Rows of the live members in this round's random order (entries of rows that changed
    /// hands or went down since are skipped; a reused row may come up twice in a round).
    var probeOrder: [Int32] = []
    var probeIndex = 0
    var deadOrder: [Int32] = []
    var deadIndex = 0
    var probes: [UInt32: Probe] = [:]
    var probing: [NodeID: UInt32] = [:]
    var relayed: [UInt32: RelayedProbe] = [:]
    var nextSeq: UInt32 = 0

    var broadcasts: [NodeID: Broadcast] = [:]
    var broadcastQueue = Heap<BroadcastKey>()
    var broadcastOrder: UInt64 = 0

    var timers = Heap<Timer>()
    var timerOrder: UInt64 = 0
    var probeRoundAt: NIODeadline
    var pushPullAt: NIODeadline
    var deadProbeAt: NIODeadline
    /// The armed gossip timer, if any: armed only while updates are queued.
    var gossipAt: NIODeadline?
    var lastGossipAt: NIODeadline?
    /// After a stall (see `MembershipStats.stalls`), no accusations and no death verdicts until then.
    var stalledUntil: NIODeadline?
    /// Our stalls within the last `starvationWindow`, oldest first.
    var recentStalls: [NIODeadline] = []
    /// The highest incarnation at which we were declared dead while starving: refuted once we
    /// have run a `starvationWindow` without a stall (see "Stalls" in Docs/membership.md).
    var withheldDeath: UInt64?
    var withheldDeathReleaseAt: NIODeadline?
    /// The armed `stallWatch` timer: every `stallWatchInterval` for a `starvationWindow` after a stall.
    var stallWatchAt: NIODeadline?
    var lastMetadataAnnounceAt: NIODeadline?
    var joinRetryAt: NIODeadline?
    var joinAttempts = 0
    var seeds: [MemberAddress] = []
    var pulls: [NodeID: MetadataPull] = [:]

    public private(set) var localHealth = 0
    public internal(set) var stats = MembershipStats()

    /// - Parameters:
    ///   - seed: the only source of randomness (probe order, indirect peers, push-pull partner).
    ///   - generation: orders successive processes at the same address (higher = newer). The shell
    ///     passes its wall-clock start time in milliseconds; with equal generations the id learned
    ///     later wins. See `Docs/membership.md`, "Rejoin".
    ///   - knownMembers: start as a member of a converged mesh that knows these members (our own
    ///     entry, if any, is skipped): each alive at incarnation 0 with its metadata held, and
    ///     no events for them. Our probe round and push-pull timers start at random phases, as
    ///     in a core that has been running for a while. This is the state a completed join
    ///     leaves; a simulator uses it to start large meshes without simulating their joins
    ///     (`Docs/simulator.md`, "Bootstrap"). Empty (the default): we know no one.
    /// - Throws: when `metadata` or `name`/`address` exceed their limits.
    public init(
        id: NodeID, name: String, address: MemberAddress, metadata: MemberMetadata,
        settings: MembershipSettings, seed: UInt64, now: NIODeadline, generation: UInt64 = 0,
        knownMembers: [KnownMember] = []
    ) throws(MembershipError) {
        guard name.utf8.count <= MembershipWireLimits.maxNameBytes else { throw .nameTooLong(name.utf8.count) }
        guard address.host.utf8.count <= MembershipWireLimits.maxHostBytes else { throw .hostTooLong(address.host.utf8.count) }
        self.id = id
        self.name = name
        self.address = address
        self.settings = settings
        self.generation = generation
        self.selfMetadata = metadata
        self.selfMetadataBytes = try metadata.encoded(limit: settings.maxMetadataBytes)
        self.random = MembershipRandom(seed: seed)
        self.selfIdentity = MemberIdentity(id: id, name: name, address: address, generation: generation)
        probeRoundAt = now + settings.probeInterval
        pushPullAt = now + settings.pushPullInterval
        deadProbeAt = now + settings.deadProbeInterval
        if !knownMembers.isEmpty {
            table.reserveCapacity(knownMembers.count)
            for known in knownMembers where known.id != id && known.identity.address != address {
                table.appendKnown(MemberState(
                    identity: known.identity, status: .alive, incarnation: 0, metadataVersion: known.body.version,
                    body: known.body, changedAt: now), hashes: known.hashes)
            }
            liveOthers = table.count
            _ = nextProbeTarget()
            probeIndex = 0
            probeRoundAt = now + .nanoseconds(Int64.random(in: 1...settings.probeInterval.nanoseconds, using: &random))
            pushPullAt = now + .nanoseconds(Int64.random(in: 1...pushPullInterval.nanoseconds, using: &random))
        }
        schedule(.probeRound, at: probeRoundAt)
        schedule(.pushPull, at: pushPullAt)
        schedule(.deadProbe, at: deadProbeAt)
    }

    // MARK: Public API

    /// Every known member, self included, dead and left ones until reaped. O(n).
    public var members: [Member] {
        var out = [selfMember]
        out.reserveCapacity(table.count + 1)
        for state in table { out.append(state.member) }
        return out
    }

    public func member(_ id: NodeID) -> Member? {
        id == self.id ? selfMember : table[id]?.member
    }

    public var nextWakeup: NIODeadline {
        timers.min?.deadline ?? .distantFuture
    }

    public var incarnation: UInt64 { selfIncarnation }

    /// Contacts `seeds` over the stream channel (push-pull) and retries with backoff until some
    /// member is known alive. Seeds may be down or wrong; our own address is skipped.
    public mutating func join(seeds: [MemberAddress], now: NIODeadline) -> [MembershipDirective] {
        guard !hasLeft else { return [] }
        self.seeds = seeds.filter { $0 != address }
        joinAttempts = 0
        var out: [MembershipDirective] = []
        attemptJoin(now: now, into: &out)
        return out
    }

    public mutating func receiveDatagram(_ bytes: [UInt8], from: MemberAddress, now: NIODeadline) -> [MembershipDirective] {
        stats.datagramsReceived += 1
        stats.datagramBytesReceived += bytes.count
        guard !hasLeft else { return [] }
        defer { armGossip(now: now) }
        guard let (sender, messages) = Wire.decodeDatagram(bytes) else {
            stats.malformedDropped += 1
            return []
        }
        var out: [MembershipDirective] = []
        // Updates first, so an ack answering a ping already carries any refutation it caused.
        for case .update(let update) in messages {
            apply(update, learnedFrom: from, now: now, into: &out)
        }
        for message in messages {
            switch message {
            case .ping(let seq, let target):
                handlePing(seq: seq, target: target, sender: sender, from: from, now: now, into: &out)
            case .pingReq(let seq, let target, let targetAddress):
                handlePingReq(seq: seq, target: target, targetAddress: targetAddress, from: from, now: now, into: &out)
            case .ack(let seq):
                handleAck(seq: seq, sender: sender, now: now, into: &out)
            case .nack(let seq):
                if probes[seq] != nil {
                    probes[seq]!.nacks += 1
                    stats.nacksReceived += 1
                }
            case .update:
                break
            }
        }
        // A ping to us was answered with the sender's death already (buddy system).
        let pingedUs = messages.contains { if case .ping(_, let target) = $0 { target == id } else { false } }
        if !pingedUs { heardFrom(sender, at: from, now: now, into: &out) }
        return out
    }

    public mutating func receiveStream(_ bytes: [UInt8], from: MemberAddress, now: NIODeadline) -> [MembershipDirective] {
        stats.streamMessagesReceived += 1
        guard !hasLeft else { return [] }
        defer { armGossip(now: now) }
        guard let (sender, senderAddress, message) = Wire.decodeStream(bytes, maxMetadataBytes: settings.maxMetadataBytes) else {
            stats.malformedDropped += 1
            return []
        }
        var out: [MembershipDirective] = []
        switch message {
        case .pushPull(let isRequest, let records, let withMetadata):
            stats.pushPullsReceived += 1
            let wasAlone = liveOthers == 0
            merge(records, sender: sender, senderAddress: senderAddress, now: now, into: &out)
            // Our first view of the mesh (a join): tell everyone in it about us at once rather
            // than leave it to gossip from the seed.
            if wasAlone && liveOthers > 0 { broadcastDirectly(selfAlive, into: &out) }
            if isRequest {
                // A joiner asks for small metadata inline, so it pulls nothing.
                sendStream(
                    .pushPull(isRequest: false, records: stateRecords(withMetadata: withMetadata), withMetadata: withMetadata),
                    to: senderAddress, into: &out)
            }
        case .metadataRequest(let memberID, let version):
            answerMetadataRequest(memberID, version: version, to: senderAddress, into: &out)
        case .metadataResponse(let memberID, let version, let body):
            receiveMetadata(memberID, version: version, body: body, now: now, into: &out)
        case .ping(let seq, let target):
            if target == id { sendStream(.ack(seq: seq), to: senderAddress, into: &out) }
        case .ack(let seq):
            if probes[seq] != nil {
                probes[seq]!.streamAcked = true
                stats.streamAcksReceived += 1
            }
        }
        heardFrom(sender, at: senderAddress, now: now, into: &out)
        return out
    }

    /// A peer link to `memberID` was established: its handshake proved it runs and holds the
    /// network's key. Evidence like any message from it (see `heardFrom`).
    public mutating func linkEstablished(_ memberID: NodeID, now: NIODeadline) -> [MembershipDirective] {
        guard !hasLeft, memberID != id, let state = table[memberID] else { return [] }
        var out: [MembershipDirective] = []
        heardFrom(memberID, at: state.address, now: now, into: &out)
        armGossip(now: now)
        return out
    }

    /// A stream message to `to` could not be delivered. `refused`: the connection was refused
    /// (ECONNREFUSED: nothing listens on that port, so the process is gone; a paused process's
    /// kernel still accepts). A refused stream ping ends its probe at once, and our suspicion of
    /// the target then uses `refusedSuspicionMinimum`.
    public mutating func streamFailed(to: MemberAddress, now: NIODeadline, refused: Bool = false) -> [MembershipDirective] {
        stats.streamFailures += 1
        guard !hasLeft else { return [] }
        defer { armGossip(now: now) }
        var out: [MembershipDirective] = []
        if refused, let target = table.holder(of: to), let seq = probing[target], let probe = probes[seq],
           probe.indirectSent, probe.kind != .dead
        {
            probes[seq]!.refused = true
            stats.probesRefused += 1
            probeEnd(seq, now: now, into: &out)
        }
        // A pull whose current source failed moves on to another source at once, if any.
        let failedPulls = pulls.filter { $0.value.current == to }.map(\.key)
        for memberID in failedPulls.sorted() {
            pulls[memberID]!.unreachable.insert(to)
            retryPull(memberID, early: true, now: now, into: &out)
        }
        return out
    }

    public mutating func tick(now: NIODeadline) -> [MembershipDirective] {
        var out: [MembershipDirective] = []
        defer { armGossip(now: now) }
        // A timer this late means we were not running (SIGSTOP, CPU starvation): what we would
        // conclude now from missing acks, or from a suspicion whose refutation may sit unread
        // in our socket, is not evidence about others.
        if !hasLeft, let first = timers.min, now - first.deadline > settings.probeTimeout {
            stats.stalls += 1
            stalledUntil = now + settings.probeInterval
            adjustHealth(+1)
            if now - first.deadline >= starvationStallMinimum {
                recentStalls.append(now)
                let window = starvationWindow
                recentStalls.removeAll { now - $0 >= window }
                if withheldDeath != nil { armWithheldDeathRelease(now: now) }
            }
            // Keep a timer running for a window, so that a process that keeps being starved
            // keeps finding its timers late even when it has little else scheduled.
            if stallWatchAt == nil {
                stallWatchAt = now + stallWatchInterval
                schedule(.stallWatch, at: stallWatchAt!)
            }
        }
        while let first = timers.min, first.deadline <= now {
            _ = timers.removeMin()
            guard !hasLeft else { continue }
            fire(first.kind, deadline: first.deadline, now: now, into: &out)
        }
        return out
    }

    /// A peer link to `memberID` broke: probe it now (same lifecycle as a regular probe, so only
    /// a failed direct + indirect probe leads to suspicion, never the hint itself).
    public mutating func linkBroken(_ memberID: NodeID, now: NIODeadline) -> [MembershipDirective] {
        guard !hasLeft, let state = table[memberID], state.isLive else { return [] }
        var out: [MembershipDirective] = []
        startProbe(memberID, kind: .hint, now: now, into: &out)
        return out
    }

    /// ICMP port unreachable for `address`: treated exactly like `linkBroken` for its member.
    public mutating func unreachable(_ address: MemberAddress, now: NIODeadline) -> [MembershipDirective] {
        guard let memberID = table.holder(of: address) else { return [] }
        return linkBroken(memberID, now: now)
    }

    /// Publishes new metadata: bumps version and incarnation and gossips the new version; peers
    /// pull the body over the stream channel.
    public mutating func updateMetadata(_ metadata: MemberMetadata, now: NIODeadline) throws(MembershipError) -> [MembershipDirective] {
        let bytes = try metadata.encoded(limit: settings.maxMetadataBytes)
        guard !hasLeft else { return [] }
        selfMetadata = metadata
        selfMetadataBytes = bytes
        selfMetadataVersion += 1
        selfIncarnation += 1
        var out: [MembershipDirective] = [.event(.metadataChanged(selfMember))]
        // Directly to everyone, so all pull the body at once; a burst of changes sends the
        // first directly and lets gossip (at most a gossip interval later) carry the rest.
        if let last = lastMetadataAnnounceAt, now - last < settings.gossipInterval {
            enqueue(selfAlive)
        } else {
            lastMetadataAnnounceAt = now
            broadcastDirectly(selfAlive, into: &out)
        }
        armGossip(now: now)
        return out
    }

    /// Graceful leave: sends `left` (with a bumped incarnation) directly to every live member (up
    /// to `directBroadcastLimit`; they gossip it on), since the shell stops us soon after.
    /// Afterwards the core ignores all input.
    public mutating func leave(now: NIODeadline) -> [MembershipDirective] {
        guard !hasLeft else { return [] }
        selfIncarnation += 1
        var out: [MembershipDirective] = [.event(.statusChanged(selfMember.with(status: .left), from: .alive))]
        broadcastDirectly(.left(id: id, incarnation: selfIncarnation), into: &out)
        hasLeft = true
        return out
    }

    // MARK: Self

    var selfMember: Member {
        Member(
            id: id, name: name, address: address, status: hasLeft ? .left : .alive, incarnation: selfIncarnation,
            metadataVersion: selfMetadataVersion, metadata: selfMetadata)
    }

    var selfAlive: GossipUpdate {
        .alive(selfIdentity, incarnation: selfIncarnation, metadataVersion: selfMetadataVersion, metadata: inline(selfMetadataBytes))
    }

    /// `body` if it is small enough to ride inline (`maxInlineMetadataBytes`), else nil.
    func inline(_ body: [UInt8]?) -> [UInt8]? {
        guard let body, body.count <= settings.maxInlineMetadataBytes else { return nil }
        return body
    }

    /// Someone holds us suspect, dead or left at `incarnation`. If that is current, refute with a
    /// higher incarnation, sent directly to every live member (the accusation's timers are
    /// running everywhere). A stale accusation means whoever told us (`from`) missed our last
    /// refutation, and gossip, which has moved on, may not reach it before its own timer runs
    /// out: answer it directly with our current alive, and queue that for gossip again.
    ///
    /// An accusation heard while we are starving (`starving`: our own timers keep firing late,
    /// so we get CPU in scraps) is not refuted yet: a refutation would bring us back only to be
    /// found unresponsive and accused again, over and over (Serf's starved agents flap so). We
    /// let the accusation run its course, stay dead until we have run `starvationWindow`
    /// without a stall, and then refute once. A pause (one stall: SIGSTOP, then SIGCONT)
    /// refutes at once.
    mutating func heardAccusation(
        incarnation accused: UInt64, from: MemberAddress?, dead: Bool = false, now: NIODeadline, into out: inout [MembershipDirective]
    ) {
        if accused >= selfIncarnation, withheldDeath != nil || starving(now: now) {
            withheldDeath = max(withheldDeath ?? 0, accused)
            stats.refutationsWithheld += 1
            armWithheldDeathRelease(now: now)
            return
        }
        if accused >= selfIncarnation {
            selfIncarnation = accused + 1
            stats.refutations += 1
            adjustHealth(+1)
            // Also to those we hold dead of late: after a partition, they are the other side,
            // and they hold us dead too.
            broadcastDirectly(selfAlive, alsoTo: recentlyDeadAddresses(now: now), into: &out)
            // Declared dead (or left): whoever told us has a view that lost us, and perhaps
            // others. Exchange full states with it at once rather than at the next round.
            if dead { repair(with: from, now: now, into: &out) }
            return
        }
        enqueue(selfAlive)
        if let from { emitDatagram(Wire.datagram(sender: id, [.update(selfAlive)]), to: from, into: &out) }
    }

    /// Ten probe intervals (10 s on the LAN): the span over which three stalls mean starvation,
    /// and how long a starved member must run without one before it refutes its death.
    var starvationWindow: TimeAmount { .nanoseconds(settings.probeInterval.nanoseconds * 10) }

    /// One probe timeout (500 ms on the LAN): the stall watch's period.
    var stallWatchInterval: TimeAmount { settings.probeTimeout }

    /// The lateness from which a stall counts towards starvation: a probe timeout, and never
    /// less than 250 ms, whatever the profile. Shorter stalls are what a busy or loaded machine
    /// does to a healthy process (a fast-profile relay moving a gigabyte stalls by 50–200 ms),
    /// and such a process must keep refuting.
    var starvationStallMinimum: TimeAmount { max(settings.probeTimeout, .milliseconds(250)) }

    /// At least three stalls of `starvationStallMinimum` within the last `starvationWindow`:
    /// not one pause, but a process that keeps losing the CPU for longer than a probe timeout.
    func starving(now: NIODeadline) -> Bool {
        recentStalls.filter { now - $0 < starvationWindow }.count >= 3
    }

    mutating func armWithheldDeathRelease(now: NIODeadline) {
        let at = (recentStalls.last ?? now) + starvationWindow
        guard withheldDeathReleaseAt != at else { return }
        withheldDeathReleaseAt = at
        schedule(.releaseWithheldDeath, at: at)
    }

    /// `update` in one datagram to every live member, up to `directBroadcastLimit` of them chosen
    /// at random; also queued for gossip, which reaches the rest and repairs losses.
    mutating func broadcastDirectly(_ update: GossipUpdate, alsoTo extra: [MemberAddress] = [], into out: inout [MembershipDirective]) {
        enqueue(update)
        var targets = liveOthers > settings.directBroadcastLimit
            ? randomLive(settings.directBroadcastLimit, where: { $0.isLive })
            : table.filter(\.isLive).map(\.address)
        targets += extra.prefix(max(0, settings.directBroadcastLimit - targets.count))
        let payload = Wire.datagram(sender: id, [.update(update)])
        for target in targets {
            stats.directBroadcastsSent += 1
            emitDatagram(payload, to: target, into: &out)
        }
    }

    /// Up to `count` distinct random live members satisfying `accept`, drawn from the probe
    /// order (which holds every live member): O(count), not a scan of the table. Falls back to
    /// a scan when draws keep missing (a table of mostly dead members).
    mutating func randomLive(_ count: Int, where accept: (MemberState) -> Bool) -> [MemberAddress] {
        var chosen: Set<Int32> = []
        var out: [MemberAddress] = []
        var misses = 0
        while out.count < count, !probeOrder.isEmpty, misses < 4 * count + 16 {
            let row = probeOrder[Int.random(in: 0..<probeOrder.count, using: &random)]
            guard let state = table.state(atRow: row), accept(state), chosen.insert(row).inserted else {
                misses += 1
                continue
            }
            out.append(state.address)
        }
        if out.count < count {
            var rest = table.filter(accept).map(\.address).filter { !out.contains($0) }
            rest.shuffle(using: &random)
            out += rest.prefix(count - out.count)
        }
        return out
    }

    mutating func adjustHealth(_ delta: Int) {
        localHealth = min(settings.maxLocalHealth, max(0, localHealth + delta))
    }

    /// An interval stretched by Lifeguard's local health multiplier.
    func scaled(_ amount: TimeAmount) -> TimeAmount {
        .nanoseconds(amount.nanoseconds * Int64(localHealth + 1))
    }

    /// alive + suspect members, self included.
    var liveCount: Int {
        liveOthers + 1
    }

    /// Alive + suspect members other than self, kept up to date on every status change so the
    /// probe round and each new suspicion cost O(1) instead of a scan of the table.
    var liveOthers = 0

    /// `pushPullInterval` × (⌈log2(n / 32)⌉ + 1) beyond 32 live members (memberlist's
    /// pushPullScale), so the full-state cost per member stays about flat as n grows.
    var pushPullInterval: TimeAmount {
        var multiplier: Int64 = 1
        var covered = 32
        while covered < liveCount {
            covered *= 2
            multiplier += 1
        }
        return .nanoseconds(settings.pushPullInterval.nanoseconds * multiplier)
    }

    /// λ·⌈log10(n + 1)⌉ where n counts every member not yet reaped, self included.
    var retransmitLimit: Int {
        settings.retransmitMultiplier * max(1, log10Ceiling(table.count + 2))
    }

    // MARK: Timers

    mutating func schedule(_ kind: TimerKind, at deadline: NIODeadline) {
        timerOrder += 1
        timers.insert(Timer(deadline: deadline, order: timerOrder, kind: kind))
    }

    mutating func nextSequence() -> UInt32 {
        nextSeq &+= 1
        return nextSeq
    }

    mutating func fire(_ kind: TimerKind, deadline: NIODeadline, now: NIODeadline, into out: inout [MembershipDirective]) {
        switch kind {
        case .probeRound:
            guard deadline == probeRoundAt else { return }
            probeRound(now: now, into: &out)
        case .probeIndirect(let seq):
            probeIndirect(seq, now: now, into: &out)
        case .probeEnd(let seq):
            probeEnd(seq, now: now, into: &out)
        case .suspicion(let memberID):
            guard let suspicion = suspicions[memberID], suspicion.deadline <= now else { return }
            if let stalledUntil, now < stalledUntil {
                schedule(.suspicion(memberID), at: stalledUntil)
                return
            }
            declareDead(memberID, now: now, into: &out)
        case .relayNack(let seq):
            guard let relay = relayed[seq], !relay.nackSent else { return }
            relayed[seq]!.nackSent = true
            sendDatagram([.nack(seq: relay.requesterSeq)], to: relay.requester, into: &out)
        case .relayEnd(let seq):
            relayed[seq] = nil
        case .stallWatch:
            guard deadline == stallWatchAt else { return }
            if let last = recentStalls.last, now - last < starvationWindow {
                stallWatchAt = now + stallWatchInterval
                schedule(.stallWatch, at: stallWatchAt!)
            } else {
                stallWatchAt = nil
            }
        case .releaseWithheldDeath:
            guard deadline == withheldDeathReleaseAt, let withheld = withheldDeath else { return }
            withheldDeathReleaseAt = nil
            withheldDeath = nil
            heardAccusation(incarnation: withheld, from: nil, now: now, into: &out)
        case .pushPull:
            guard deadline == pushPullAt else { return }
            pushPullAt = now + pushPullInterval
            schedule(.pushPull, at: pushPullAt)
            periodicPushPull(into: &out)
        case .gossip:
            guard deadline == gossipAt else { return }
            gossipAt = nil
            lastGossipAt = now
            gossipRound(now: now, into: &out)
        case .deadProbe:
            guard deadline == deadProbeAt else { return }
            deadProbeAt = now + settings.deadProbeInterval
            schedule(.deadProbe, at: deadProbeAt)
            probeNextDead(now: now, into: &out)
        case .joinRetry:
            guard deadline == joinRetryAt else { return }
            joinRetryAt = nil
            attemptJoin(now: now, into: &out)
        case .metadataPull(let memberID):
            guard let pull = pulls[memberID], pull.deadline <= now else { return }
            retryPull(memberID, now: now, into: &out)
        case .reap(let memberID):
            guard let state = table[memberID], state.status == .dead || state.status == .left,
                  state.changedAt + settings.reapAfter <= now
            else { return }
            remove(memberID)
            stats.reaped += 1
            out.append(.event(.removed(memberID)))
        }
    }

    mutating func remove(_ memberID: NodeID) {
        guard let state = table[memberID] else { return }
        table[memberID] = nil
        if state.isLive { liveOthers -= 1 }
        accusers[memberID] = nil
        lastProbed[memberID] = nil
        suspicions[memberID] = nil
        pulls[memberID] = nil
        broadcasts[memberID] = nil
    }

    // MARK: Gossip

    /// Arms the gossip timer when updates are queued: at once after an idle spell, else one
    /// `gossipInterval` after the previous round. Nothing is armed while the queue is empty.
    mutating func armGossip(now: NIODeadline) {
        guard !hasLeft, gossipAt == nil, !broadcasts.isEmpty, liveOthers > 0 else { return }
        var at = now
        if let last = lastGossipAt, last + settings.gossipInterval > now { at = last + settings.gossipInterval }
        gossipAt = at
        schedule(.gossip, at: at)
    }

    /// One update-only datagram to each of `gossipFanout` random live members (and members dead
    /// for less than `gossipToTheDead`, so a falsely dead one hears it and refutes).
    mutating func gossipRound(now: NIODeadline, into out: inout [MembershipDirective]) {
        guard !broadcasts.isEmpty else { return }
        for target in gossipTargets(now: now) {
            var bytes = Wire.datagramHeader(sender: id)
            let headerBytes = bytes.count
            piggyback(into: &bytes, skipping: nil)
            guard bytes.count > headerBytes else { break }
            stats.gossipDatagramsSent += 1
            emitDatagram(bytes, to: target, into: &out)
        }
    }

    /// `gossipFanout` distinct members drawn uniformly from the live ones and those dead for
    /// less than `gossipToTheDead`: O(fanout) draws from the probe order and `recentlyDead`.
    mutating func gossipTargets(now: NIODeadline) -> [MemberAddress] {
        while let first = recentlyDead.first,
              table[first].map({ $0.status != .dead || now - $0.changedAt >= settings.gossipToTheDead }) ?? true
        {
            recentlyDead.removeFirst()
        }
        let candidates = liveOthers + recentlyDead.count
        let fanout = min(settings.gossipFanout, candidates)
        guard candidates > 4 * fanout else {
            var all = table.filter { $0.isLive || ($0.status == .dead && now - $0.changedAt < settings.gossipToTheDead) }.map(\.address)
            for i in 0..<min(fanout, all.count) { all.swapAt(i, Int.random(in: i..<all.count, using: &random)) }
            return Array(all.prefix(fanout))
        }
        var out: [MemberAddress] = []
        var deadPicked: Set<Int> = []
        var misses = 0
        while out.count < fanout && misses < 64 {
            let draw = Int.random(in: 0..<candidates, using: &random)
            if draw < recentlyDead.count {
                if deadPicked.insert(draw).inserted, let state = table[recentlyDead[draw]], state.status == .dead,
                   now - state.changedAt < settings.gossipToTheDead, !out.contains(state.address)
                {
                    out.append(state.address)
                } else {
                    misses += 1
                }
            } else if let address = randomLive(1, where: { $0.isLive }).first, !out.contains(address) {
                out.append(address)
            } else {
                misses += 1
            }
        }
        return out
    }

    // MARK: Join and push-pull

    mutating func attemptJoin(now: NIODeadline, into out: inout [MembershipDirective]) {
        guard !seeds.isEmpty, liveOthers == 0 else {
            joinAttempts = 0
            return
        }
        stats.joinAttempts += 1
        // With small metadata inline both ways: the seed learns ours and we learn everyone's
        // without a pull per member (a pull is a link, and a handshake, per pair).
        let records = stateRecords(withMetadata: true)
        for seed in seeds {
            sendStream(.pushPull(isRequest: true, records: records, withMetadata: true), to: seed, into: &out)
            stats.pushPullsSent += 1
        }
        let base = settings.joinRetryInterval.nanoseconds
        let backoff = min(settings.joinRetryMaxInterval.nanoseconds, base << Int64(min(joinAttempts, 20)))
        joinAttempts += 1
        joinRetryAt = now + .nanoseconds(backoff)
        schedule(.joinRetry, at: joinRetryAt!)
    }

    mutating func periodicPushPull(into out: inout [MembershipDirective]) {
        guard let partner = randomLive(1, where: { $0.status == .alive }).first else { return }
        stats.pushPullsSent += 1
        sendStream(.pushPull(isRequest: true, records: stateRecords()), to: partner, into: &out)
    }

    /// Every record, self first. `withMetadata`: held bodies of the current version ride along
    /// when small (for a joiner); periodic push-pulls carry versions only.
    func stateRecords(withMetadata: Bool = false) -> [StateRecord] {
        var records = [StateRecord(
            identity: selfIdentity, status: .alive, incarnation: selfIncarnation, metadataVersion: selfMetadataVersion,
            metadata: withMetadata ? inline(selfMetadataBytes) : nil)]
        records.reserveCapacity(table.count + 1)
        for state in table {
            records.append(StateRecord(
                identity: state.identity, status: state.status, incarnation: state.incarnation,
                metadataVersion: state.metadataVersion, metadata: withMetadata ? inlineMetadata(of: state) : nil))
        }
        // By id, so that a record's place says nothing about when we learned it.
        records[1...].sort { $0.identity.id < $1.identity.id }
        return records
    }

    /// A remote full state. A remote `dead` becomes a suspicion accused by the sender (as in
    /// memberlist): one member's verdict is not enough to kill a member we may still reach.
    mutating func merge(_ records: [StateRecord], sender: NodeID, senderAddress: MemberAddress, now: NIODeadline, into out: inout [MembershipDirective]) {
        for record in records {
            let update: GossipUpdate
            switch record.status {
            case .alive:
                update = .alive(record.identity, incarnation: record.incarnation, metadataVersion: record.metadataVersion, metadata: record.metadata)
            case .suspect, .dead:
                if record.id == id {
                    update = record.status == .dead
                        ? .dead(id: id, incarnation: record.incarnation, accuser: sender)
                        : .suspect(id: id, incarnation: record.incarnation, accuser: sender)
                } else {
                    update = .suspect(id: record.id, incarnation: record.incarnation, accuser: sender)
                }
            case .left:
                update = .left(id: record.id, incarnation: record.incarnation)
            }
            let heldAlive = record.status != .alive && record.status != .left && table[record.id]?.status == .alive
            apply(update, learnedFrom: senderAddress, now: now, into: &out)
            // A suspicion on the word of another view (after a partition, a stale one): like a
            // verdict about a member we held alive, only our own timer turns it into a death.
            if heldAlive, table[record.id]?.status == .suspect { suspicions[record.id]?.fromVerdict = true }
        }
    }

    // MARK: Output

    mutating func sendStream(_ message: StreamMessage, to target: MemberAddress, into out: inout [MembershipDirective]) {
        stats.streamMessagesSent += 1
        out.append(.sendStream(Wire.encodeStream(sender: id, address: address, message), to: target))
    }

    mutating func emitDatagram(_ bytes: [UInt8], to target: MemberAddress, into out: inout [MembershipDirective]) {
        stats.datagramsSent += 1
        stats.datagramBytesSent += bytes.count
        out.append(.sendDatagram(bytes, to: target))
    }

    /// `primary` messages, then `buddy` (an accusation about the target, always included), then
    /// as many queued updates as fit in `maxDatagramBytes`.
    mutating func sendDatagram(_ primary: [DatagramMessage], buddy: GossipUpdate? = nil, to target: MemberAddress, into out: inout [MembershipDirective]) {
        var bytes = Wire.datagramHeader(sender: id)
        for message in primary { bytes += Wire.encode(message) }
        var skip: NodeID?
        if let buddy {
            bytes += Wire.encode(.update(buddy))
            skip = buddy.id
        }
        piggyback(into: &bytes, skipping: skip)
        emitDatagram(bytes, to: target, into: &out)
    }
}

extension Member {
    func with(status: MemberStatus) -> Member {
        var copy = self
        copy.status = status
        return copy
    }
}
