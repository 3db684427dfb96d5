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

    var table: [NodeID: MemberState] = [:]
    var byAddress: [MemberAddress: NodeID] = [:]
    var byName: [String: NodeID] = [:]
    var reportedConflicts: Set<[NodeID]> = []
    var suspicions: [NodeID: Suspicion] = [:]
    var random: MembershipRandom

    var probeOrder: [NodeID] = []
    var probeIndex = 0
    var deadOrder: [NodeID] = []
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
    /// - Throws: when `metadata` or `name`/`address` exceed their limits.
    public init(
        id: NodeID, name: String, address: MemberAddress, metadata: MemberMetadata,
        settings: MembershipSettings, seed: UInt64, now: NIODeadline, generation: UInt64 = 0
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
        self.byName[name] = id
        probeRoundAt = now + settings.probeInterval
        pushPullAt = now + settings.pushPullInterval
        deadProbeAt = now + settings.deadProbeInterval
        schedule(.probeRound, at: probeRoundAt)
        schedule(.pushPull, at: pushPullAt)
        schedule(.deadProbe, at: deadProbeAt)
    }

    // MARK: Public API

    /// Every known member, self included, dead and left ones until reaped. O(n).
    public var members: [Member] {
        var out = [selfMember]
        out.reserveCapacity(table.count + 1)
        for state in table.values { out.append(state.member) }
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
        if refused, let target = byAddress[to], let seq = probing[target], let probe = probes[seq],
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
        guard let memberID = byAddress[address] else { return [] }
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
        .alive(
            id: id, incarnation: selfIncarnation, name: name, address: address, metadataVersion: selfMetadataVersion,
            generation: generation, metadata: inline(selfMetadataBytes))
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
    mutating func heardAccusation(incarnation accused: UInt64, from: MemberAddress?, into out: inout [MembershipDirective]) {
        if accused >= selfIncarnation {
            selfIncarnation = accused + 1
            stats.refutations += 1
            adjustHealth(+1)
            broadcastDirectly(selfAlive, into: &out)
            return
        }
        enqueue(selfAlive)
        if let from { emitDatagram(Wire.datagram(sender: id, [.update(selfAlive)]), to: from, into: &out) }
    }

    /// `update` in one datagram to every live member, up to `directBroadcastLimit` of them chosen
    /// at random; also queued for gossip, which reaches the rest and repairs losses.
    mutating func broadcastDirectly(_ update: GossipUpdate, into out: inout [MembershipDirective]) {
        enqueue(update)
        var live = table.values.filter(\.isLive).map(\.id)
        live.sort()
        if live.count > settings.directBroadcastLimit { live.shuffle(using: &random) }
        let payload = Wire.datagram(sender: id, [.update(update)])
        for target in live.prefix(settings.directBroadcastLimit) {
            stats.directBroadcastsSent += 1
            emitDatagram(payload, to: table[target]!.address, into: &out)
        }
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
        guard let state = table.removeValue(forKey: memberID) else { return }
        if state.isLive { liveOthers -= 1 }
        if byAddress[state.address] == memberID { byAddress[state.address] = nil }
        if byName[state.name] == memberID { byName[state.name] = nil }
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
        var targets = table.values.filter { state in
            state.isLive || (state.status == .dead && now - state.changedAt < settings.gossipToTheDead)
        }.map(\.id)
        targets.sort()
        let fanout = min(settings.gossipFanout, targets.count)
        for i in 0..<fanout {
            targets.swapAt(i, Int.random(in: i..<targets.count, using: &random))
        }
        for target in targets.prefix(fanout) {
            var bytes = Wire.datagramHeader(sender: id)
            let headerBytes = bytes.count
            piggyback(into: &bytes, skipping: nil)
            guard bytes.count > headerBytes else { break }
            stats.gossipDatagramsSent += 1
            emitDatagram(bytes, to: table[target]!.address, into: &out)
        }
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
        var candidates = table.values.filter { $0.status == .alive }.map(\.id)
        guard !candidates.isEmpty else { return }
        candidates.sort()
        let partner = candidates[Int.random(in: 0..<candidates.count, using: &random)]
        stats.pushPullsSent += 1
        sendStream(.pushPull(isRequest: true, records: stateRecords()), to: table[partner]!.address, into: &out)
    }

    /// Every record, self first. `withMetadata`: held bodies of the current version ride along
    /// when small (for a joiner); periodic push-pulls carry versions only.
    func stateRecords(withMetadata: Bool = false) -> [StateRecord] {
        var records = [StateRecord(
            id: id, name: name, address: address, status: .alive, incarnation: selfIncarnation,
            metadataVersion: selfMetadataVersion, generation: generation,
            metadata: withMetadata ? inline(selfMetadataBytes) : nil)]
        records.reserveCapacity(table.count + 1)
        for state in table.values {
            records.append(StateRecord(
                id: state.id, name: state.name, address: state.address, status: state.status,
                incarnation: state.incarnation, metadataVersion: state.metadataVersion, generation: state.generation,
                metadata: withMetadata ? inlineMetadata(of: state) : nil))
        }
        // Dictionary order differs between runs (per-instance hash seeds); the receiver applies
        // records in this order, so sort to keep a seed's replay exact.
        records[1...].sort { $0.id < $1.id }
        return records
    }

    /// A remote full state. A remote `dead` becomes a suspicion accused by the sender (as in
    /// memberlist): one member's verdict is not enough to kill a member we may still reach.
    mutating func merge(_ records: [StateRecord], sender: NodeID, senderAddress: MemberAddress, now: NIODeadline, into out: inout [MembershipDirective]) {
        for record in records {
            let update: GossipUpdate
            switch record.status {
            case .alive:
                update = .alive(
                    id: record.id, incarnation: record.incarnation, name: record.name, address: record.address,
                    metadataVersion: record.metadataVersion, generation: record.generation, metadata: record.metadata)
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
            apply(update, learnedFrom: senderAddress, now: now, into: &out)
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
