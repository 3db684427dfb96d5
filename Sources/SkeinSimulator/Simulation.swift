import HeapModule
import NIOCore
import SkeinMembership

/// Runs a `Scenario`: many `Membership` cores in one process, on virtual time, through a modelled
/// network. Deterministic: one seed gives one run. See `Docs/simulator.md`.
package struct Simulation {
    package let scenario: Scenario
    /// Virtual nanoseconds since the start of the run.
    package private(set) var time: Int64 = 0
    /// Virtual time at which the measured phase started (after bootstrap).
    package private(set) var measuredStart: Int64 = 0

    static let clockBase: UInt64 = 1_000_000_000

    var random: SimulationRandom
    var queue = Heap<Pending>()
    var order: UInt64 = 0
    var steps = 0

    // Per slot (one address each).
    var cores: [Membership?] = []
    var states: [SlotState] = []
    var currentProcess: [Int] = []
    var addresses: [MemberAddress] = []
    var wakeupAt: [Int64] = []
    var tickOnResume: [Bool] = []
    var backlogs: [[Delivery]] = []
    var slotByAddress: [MemberAddress: Int] = [:]

    // Per process (one core's lifetime; a restart is a new process at the same slot).
    var processes: [Process] = []
    var processByID: [NodeID: Int] = [:]

    // "Who sees whom alive", over slots, for the current processes only: one bit per pair.
    var aliveBits: [UInt64] = []
    var aliveCount: [Int] = []
    let capacity: Int

    var partitions: [ActivePartition] = []
    /// Extra datagram loss on one member's traffic, both ways (`memberLoss`), by slot.
    var memberLoss: [Int: Double] = [:]
    /// Per (from, to) slot pair: the latest delivery time of a stream message delayed by
    /// retransmissions, so later messages of the pair stay behind it (FIFO, as TCP).
    var streamClear: [Int: Int64] = [:]
    /// Open spells in which an observer (slot) holds a running member (process) dead: start times.
    var deadSpells: [Int64: Int64] = [:]
    var spellsBySubject: [Int: Set<Int>] = [:]
    var spellsByObserver: [Int: Set<Int>] = [:]
    /// When the last fault ended (heal, loss end, resume, restart): -1 before any.
    var lastFaultEnd: Int64 = -1
    var heldDeadAfterFaults: Int64 = -1
    var longestHeldDead: Int64 = -1
    var watches: [Watch] = []
    var watchesBySubject: [Int: [Int]] = [:]
    var convergenceWatches: [(label: String, start: Int64, reached: Int64?)] = []
    var sampling = false
    var metadataCounter: UInt32 = 0

    var report: SimulationReport
    var falseVictims: Set<Int> = []
    var restWindow: (start: Int64, end: Int64) = (0, 0)
    var restDatagramBytes = 0
    var restStreamBytes = 0

    package init(_ scenario: Scenario) {
        self.scenario = scenario
        self.random = SimulationRandom(seed: scenario.seed)
        self.capacity = scenario.slotCapacity
        let words = (capacity * capacity + 63) / 64
        aliveBits = [UInt64](repeating: 0, count: words)
        report = SimulationReport(
            scenario: scenario.name, members: scenario.members, profile: scenario.profile.rawValue, seed: scenario.seed,
            bootstrap: scenario.bootstrap.rawValue, loss: scenario.network.datagramLoss,
            seconds: Double(scenario.duration.nanoseconds) / 1e9)
        cores.reserveCapacity(capacity)
        switch scenario.bootstrap {
        case .joins:
            for _ in 0..<scenario.members { _ = addSlot() }
        case .converged:
            startConverged()
        }
    }

    /// The metadata every member starts with.
    static let initialMetadata = MemberMetadata(zone: "sim")

    /// Every initial member starts from the converged view: processes first (ids), then one
    /// `KnownMember` per member, shared by every core (so names, addresses and metadata bodies
    /// exist once, not once per core), then the cores; everyone sees everyone alive.
    mutating func startConverged() {
        let members = scenario.members
        for _ in 0..<members { _ = addSlot(withCore: false) }
        let known = (0..<members).map { slot in
            try! KnownMember(
                id: processes[currentProcess[slot]].id, name: name(of: slot), address: addresses[slot], generation: 0,
                metadata: Self.initialMetadata, maxMetadataBytes: scenario.settings.maxMetadataBytes)
        }
        for slot in 0..<members {
            cores[slot] = try! Membership(
                id: known[slot].id, name: name(of: slot), address: addresses[slot], metadata: Self.initialMetadata,
                settings: scenario.settings, seed: random.next(), now: now, generation: 0, knownMembers: known)
            scheduleWakeup(slot)
        }
        // Everyone sees everyone else alive: the bits of every (observer, subject) pair.
        for observer in 0..<members {
            for subject in 0..<members where subject != observer {
                let bit = observer * capacity + subject
                aliveBits[bit >> 6] |= 1 << UInt64(bit & 63)
            }
            aliveCount[observer] = members - 1
        }
    }

    func name(of slot: Int) -> String { "relay-\(slot)" }

    // MARK: Running

    /// Bootstrap (every member joins through member 0, until all see all alive or
    /// `bootstrapLimit`), then the measured phase with the scenario's actions.
    package mutating func run() -> SimulationReport {
        if scenario.bootstrap == .joins {
            let seed = addresses[0]
            for slot in 1..<max(1, scenario.members) {
                call(slot) { core, now in core.join(seeds: [seed], now: now) }
            }
            convergenceWatches.append((label: "bootstrap", start: 0, reached: nil))
            startSampling()
            let bootstrapEnd = scenario.bootstrapLimit.nanoseconds
            while convergenceWatches[0].reached == nil, let next = queue.min, next.at <= bootstrapEnd {
                step()
            }
            time = min(max(time, convergenceWatches[0].reached ?? bootstrapEnd), bootstrapEnd)
        }
        measuredStart = time
        let firstAction = scenario.actions.map(\.at.nanoseconds).min() ?? scenario.duration.nanoseconds
        restWindow = (measuredStart, measuredStart + min(firstAction, scenario.duration.nanoseconds))
        for (index, scheduled) in scenario.actions.enumerated() {
            push(measuredStart + max(0, scheduled.at.nanoseconds), .action(index))
        }
        run(until: measuredStart + scenario.duration.nanoseconds)
        return finish()
    }

    /// Processes every queued event up to `end`, then sets the clock to `end`.
    mutating func run(until end: Int64) {
        while let next = queue.min, next.at <= end {
            step()
        }
        time = max(time, end)
    }

    mutating func step() {
        guard let event = queue.popMin() else { return }
        steps += 1
        time = max(time, event.at)
        switch event.kind {
        case .deliver(let delivery):
            deliver(delivery)
        case .wakeup(let slot, let process):
            guard currentProcess[slot] == process, wakeupAt[slot] == event.at else { return }
            wakeupAt[slot] = .max
            switch states[slot] {
            case .running:
                call(slot) { core, now in core.tick(now: now) }
            case .paused:
                tickOnResume[slot] = true
            case .down:
                break
            }
        case .action(let index):
            perform(scenario.actions[index].action)
        case .resume(let slot, let process):
            resume(slot, process: process)
        case .heal(let id):
            for index in partitions.indices where partitions[index].id == id { partitions[index].healedAt = time }
            faultEnded("partition heal")
        case .lossEnd(let slot):
            memberLoss[slot] = nil
            faultEnded("loss end")
        case .start(let slot):
            guard states[slot] == .down else { return }
            startProcess(at: slot)
            watch(.join, subject: currentProcess[slot], goal: .status(.alive))
            let seed = upSlots.first { $0 != slot }.map { addresses[$0] }
            if let seed { call(slot) { core, now in core.join(seeds: [seed], now: now) } }
            faultEnded("restart")
        case .sample:
            sample()
        }
    }

    var now: NIODeadline { .uptimeNanoseconds(Self.clockBase + UInt64(time)) }

    /// A fault ended now: "after faults" spells count from here, and convergence is timed.
    mutating func faultEnded(_ label: String) {
        lastFaultEnd = time
        convergenceWatches.append((label: label, start: time, reached: nil))
        startSampling()
    }

    mutating func push(_ at: Int64, _ kind: Pending.Kind) {
        order += 1
        queue.insert(Pending(at: at, order: order, kind: kind))
    }

    /// Calls into the core of `slot` and carries out its directives.
    mutating func call(_ slot: Int, _ body: (inout Membership, NIODeadline) -> [MembershipDirective]) {
        guard cores[slot] != nil else { return }
        let directives = body(&cores[slot]!, now)
        carryOut(directives, from: slot)
        scheduleWakeup(slot)
    }

    /// At most one live wakeup per slot: a new one only when the core wants to wake earlier than
    /// the one queued; later ones are found stale when they pop (their time no longer matches).
    mutating func scheduleWakeup(_ slot: Int) {
        // Read through the optional: binding `cores[slot]` would copy the whole core.
        guard let raw = cores[slot]?.nextWakeup.uptimeNanoseconds else { return }
        guard raw < UInt64(Int64.max) else { return }
        let at = max(time, Int64(raw) - Int64(Self.clockBase))
        guard at < wakeupAt[slot] else { return }
        wakeupAt[slot] = at
        push(at, .wakeup(slot: slot, process: currentProcess[slot]))
    }

    // MARK: Network

    mutating func carryOut(_ directives: [MembershipDirective], from slot: Int) {
        for directive in directives {
            switch directive {
            case .sendDatagram(let bytes, let target):
                report.datagramsSent += 1
                if inRestWindow { restDatagramBytes += bytes.count }
                guard let to = slotByAddress[target], !blocked(slot, to), random.unit() >= scenario.network.datagramLoss,
                      lostOnMember(slot) == false, lostOnMember(to) == false
                else {
                    report.datagramsLost += 1
                    continue
                }
                let delay = scenario.network.datagramDelay.nanoseconds + random.nanoseconds(upTo: scenario.network.datagramJitter.nanoseconds)
                push(time + delay, .deliver(.datagram(bytes, from: slot, to: to)))
            case .sendStream(let bytes, let target):
                report.streamMessagesSent += 1
                if inRestWindow { restStreamBytes += bytes.count }
                let process = currentProcess[slot]
                guard let to = slotByAddress[target], !blocked(slot, to) else {
                    push(time + scenario.network.streamFailureDelay.nanoseconds, .deliver(.streamFailed(slot: slot, process: process, to: target)))
                    continue
                }
                let jitter = scenario.network.streamJitter.nanoseconds
                let pairDelay = jitter > 0 ? Int64(pairHash(slot, to, seed: scenario.seed) % UInt64(jitter + 1)) : 0
                var at = time + scenario.network.streamDelay.nanoseconds + pairDelay
                let pair = slot * capacity + to
                if !memberLoss.isEmpty, memberLoss[slot] != nil || memberLoss[to] != nil {
                    at += retransmissionDelay(slot, to)
                }
                if let clear = streamClear[pair] {
                    if clear > at { at = clear } else if clear < time { streamClear[pair] = nil }
                }
                if at > time + scenario.network.streamDelay.nanoseconds + pairDelay { streamClear[pair] = at }
                push(at, .deliver(.stream(bytes, from: slot, process: process, to: to)))
            case .event(let event):
                observe(event, at: slot)
            }
        }
    }

    var inRestWindow: Bool { time >= restWindow.start && time < restWindow.end }

    /// One draw against the member's own loss, if it has any.
    mutating func lostOnMember(_ slot: Int) -> Bool {
        guard let probability = memberLoss[slot] else { return false }
        return random.unit() < probability
    }

    /// What TCP's retransmissions add to a stream message when a segment or its ack may be lost
    /// at either end: 200 ms (Linux's minimum RTO), doubling, per lost attempt (at most 6).
    mutating func retransmissionDelay(_ a: Int, _ b: Int) -> Int64 {
        let keep = (1 - (memberLoss[a] ?? 0)) * (1 - (memberLoss[b] ?? 0))
        let roundTrip = keep * keep
        var delay: Int64 = 0
        var timeout: Int64 = 200_000_000
        var attempts = 0
        while attempts < 6, random.unit() >= roundTrip {
            delay += timeout
            timeout *= 2
            attempts += 1
        }
        return delay
    }

    func blocked(_ a: Int, _ b: Int) -> Bool {
        for partition in partitions where partition.healedAt == nil {
            if partition.separates(a, b) { return true }
        }
        return false
    }

    /// The pair is or was recently separated: a suspicion raised during the partition may still
    /// run out after the heal, and its verdict is the partition's doing, not a false positive.
    func excusedByPartition(_ a: Int, _ b: Int) -> Bool {
        let window = Scenario.suspicionTimeout(members: max(1, upCount), settings: scenario.settings, confirmations: 0).nanoseconds
            + 10 * scenario.settings.probeInterval.nanoseconds
        for partition in partitions where partition.healedAt.map({ time - $0 <= window }) ?? true {
            if partition.separates(a, b) { return true }
        }
        return false
    }

    mutating func deliver(_ delivery: Delivery) {
        let target = delivery.target
        switch states[target] {
        case .paused:
            backlogs[target].append(delivery)
            return
        case .down:
            switch delivery {
            case .datagram(_, let from, _):
                if scenario.network.unreachableHints {
                    push(time + scenario.network.datagramDelay.nanoseconds, .deliver(.unreachable(slot: from, process: currentProcess[from], to: addresses[target])))
                }
            case .stream(_, let from, let process, _):
                report.streamFailures += 1
                push(time + scenario.network.streamFailureDelay.nanoseconds, .deliver(.streamFailed(slot: from, process: process, to: addresses[target])))
            case .streamFailed, .unreachable:
                break
            }
            return
        case .running:
            break
        }
        switch delivery {
        case .datagram(let bytes, let from, let to):
            let source = addresses[from]
            call(to) { core, now in core.receiveDatagram(bytes, from: source, now: now) }
        case .stream(let bytes, let from, _, let to):
            let source = addresses[from]
            call(to) { core, now in core.receiveStream(bytes, from: source, now: now) }
        case .streamFailed(let slot, let process, let address):
            guard currentProcess[slot] == process else { return }
            call(slot) { core, now in core.streamFailed(to: address, now: now) }
        case .unreachable(let slot, let process, let address):
            guard currentProcess[slot] == process else { return }
            call(slot) { core, now in core.unreachable(address, now: now) }
        }
    }

    // MARK: Members

    /// A new address with a new process (not yet joined); `withCore: false` leaves creating
    /// its core to the caller (the converged bootstrap).
    mutating func addSlot(withCore: Bool = true) -> Int {
        let slot = cores.count
        let host = "10.\((slot + 1) >> 16 & 0xFF).\((slot + 1) >> 8 & 0xFF).\((slot + 1) & 0xFF)"
        let address = MemberAddress(host: host, port: 7946)
        addresses.append(address)
        slotByAddress[address] = slot
        cores.append(nil)
        states.append(.down)
        currentProcess.append(-1)
        wakeupAt.append(.max)
        tickOnResume.append(false)
        backlogs.append([])
        aliveCount.append(0)
        startProcess(at: slot, withCore: withCore)
        return slot
    }

    mutating func startProcess(at slot: Int, withCore: Bool = true) {
        let id = NodeID(high: random.next(), low: random.next())
        let process = processes.count
        processes.append(Process(slot: slot, id: id))
        processByID[id] = process
        currentProcess[slot] = process
        states[slot] = .running
        upCount += 1
        wakeupAt[slot] = .max
        tickOnResume[slot] = false
        backlogs[slot] = []
        clearAliveBits(of: slot)
        guard withCore else { return }
        cores[slot] = try! Membership(
            id: id, name: name(of: slot), address: addresses[slot], metadata: Self.initialMetadata,
            settings: scenario.settings, seed: random.next(), now: now, generation: UInt64(time / 1_000_000))
        scheduleWakeup(slot)
    }

    /// The process at `slot` stops for good (crash, or after a leave).
    mutating func stop(_ slot: Int) {
        guard states[slot] != .down else { return }
        closeSpells(ofSubject: currentProcess[slot])
        closeSpells(ofObserver: slot)
        states[slot] = .down
        upCount -= 1
        processes[currentProcess[slot]].up = false
        cores[slot] = nil
        backlogs[slot] = []
        clearAliveBits(of: slot)
    }

    var upSlots: [Int] { states.indices.filter { states[$0] != .down } }
    var upCount = 0

    // MARK: Actions

    mutating func perform(_ action: SimulationAction) {
        switch action {
        case .crash(let slot):
            guard isUp(slot) else { return }
            watch(.crash, subject: currentProcess[slot], goal: .status(.dead))
            stop(slot)
        case .pause(let slot, let duration):
            guard isUp(slot), states[slot] == .running else { return }
            let process = currentProcess[slot]
            processes[process].everPaused = true
            closeSpells(ofSubject: process)
            watch(.pause, subject: process, goal: .status(.dead))
            states[slot] = .paused
            push(time + duration.nanoseconds, .resume(slot: slot, process: process))
        case .partition(let groups, let duration):
            var group = [Int8](repeating: -1, count: capacity)
            for (index, members) in groups.enumerated() {
                for slot in members where slot < capacity { group[slot] = Int8(truncatingIfNeeded: index) }
            }
            let id = partitions.count + Int(order)
            partitions.append(ActivePartition(id: id, group: group))
            push(time + duration.nanoseconds, .heal(id: id))
        case .join(let count, let seed):
            let seedAddress = addresses[min(max(0, seed), addresses.count - 1)]
            var joined: [Int] = []
            for _ in 0..<count where cores.count < capacity { joined.append(addSlot()) }
            for slot in joined {
                call(slot) { core, now in core.join(seeds: [seedAddress], now: now) }
            }
            convergenceWatches.append((label: "join", start: time, reached: nil))
            startSampling()
        case .leave(let slot):
            guard isUp(slot), states[slot] == .running else { return }
            watch(.leave, subject: currentProcess[slot], goal: .status(.left))
            call(slot) { core, now in core.leave(now: now) }
            stop(slot)
        case .restart(let slot):
            guard isUp(slot) else { return }
            let old = currentProcess[slot]
            watch(.restart, subject: old, goal: .status(.left))
            stop(slot)
            startProcess(at: slot)
            watch(.join, subject: currentProcess[slot], goal: .status(.alive))
            let seed = upSlots.first { $0 != slot }.map { addresses[$0] }
            if let seed { call(slot) { core, now in core.join(seeds: [seed], now: now) } }
            faultEnded("restart")
        case .crashRestart(let slot, let downFor):
            guard isUp(slot) else { return }
            watch(.crash, subject: currentProcess[slot], goal: .status(.dead))
            watch(.restart, subject: currentProcess[slot], goal: .status(.left))
            stop(slot)
            push(time + max(0, downFor.nanoseconds), .start(slot: slot))
        case .memberLoss(let slot, let probability, let duration):
            guard slot >= 0 && slot < capacity else { return }
            memberLoss[slot] = min(1, max(0, probability))
            push(time + duration.nanoseconds, .lossEnd(slot: slot))
        case .updateMetadata(let slot):
            guard isUp(slot) else { return }
            metadataCounter += 1
            let metadata = MemberMetadata(zone: "sim", clusters: ["svc": metadataCounter], topics: ["t"], load: metadataCounter)
            watch(.metadata, subject: currentProcess[slot], goal: .metadata(metadata))
            call(slot) { core, now in (try? core.updateMetadata(metadata, now: now)) ?? [] }
        case .churn:
            let candidates = upSlots.filter { $0 != 0 && states[$0] == .running }
            let choice = Int(random.next() % 4)
            if choice == 0 || candidates.isEmpty {
                guard cores.count < capacity else { return }
                let slot = addSlot()
                watch(.join, subject: currentProcess[slot], goal: .status(.alive))
                let seedAddress = addresses[0]
                call(slot) { core, now in core.join(seeds: [seedAddress], now: now) }
                return
            }
            let slot = candidates[Int(random.next() % UInt64(candidates.count))]
            switch choice {
            case 1: perform(.leave(member: slot))
            case 2: perform(.crash(member: slot))
            default: perform(.restart(member: slot))
            }
        }
    }

    func isUp(_ slot: Int) -> Bool { slot >= 0 && slot < states.count && states[slot] != .down }

    mutating func resume(_ slot: Int, process: Int) {
        guard currentProcess[slot] == process, states[slot] == .paused else { return }
        states[slot] = .running
        let backlog = backlogs[slot]
        backlogs[slot] = []
        for delivery in backlog { deliver(delivery) }
        if tickOnResume[slot] {
            tickOnResume[slot] = false
            call(slot) { core, now in core.tick(now: now) }
        }
        scheduleWakeup(slot)
        // Running again: whoever still holds it dead from now on holds a live member dead.
        let id = processes[process].id
        for observer in upSlots where observer != slot {
            if cores[observer]?.member(id)?.status == .dead { openSpell(observer: observer, subject: process) }
        }
        faultEnded("pause recovery")
    }

    // MARK: Live members held dead

    static func spellKey(_ observer: Int, _ process: Int) -> Int64 { Int64(observer) << 32 | Int64(process) }

    mutating func openSpell(observer: Int, subject process: Int) {
        let key = Self.spellKey(observer, process)
        guard deadSpells[key] == nil else { return }
        deadSpells[key] = time
        spellsBySubject[process, default: []].insert(observer)
        spellsByObserver[observer, default: []].insert(process)
    }

    mutating func closeSpell(observer: Int, subject process: Int) {
        guard let start = deadSpells.removeValue(forKey: Self.spellKey(observer, process)) else { return }
        spellsBySubject[process]?.remove(observer)
        spellsByObserver[observer]?.remove(process)
        longestHeldDead = max(longestHeldDead, time - start)
        let from = max(start, lastFaultEnd)
        if time > from { heldDeadAfterFaults = max(heldDeadAfterFaults, time - from) }
    }

    mutating func closeSpells(ofSubject process: Int) {
        for observer in spellsBySubject[process] ?? [] { closeSpell(observer: observer, subject: process) }
        spellsBySubject[process] = nil
    }

    mutating func closeSpells(ofObserver slot: Int) {
        for process in spellsByObserver[slot] ?? [] { closeSpell(observer: slot, subject: process) }
        spellsByObserver[slot] = nil
    }

    // MARK: Observation

    mutating func observe(_ event: MembershipEvent, at observer: Int) {
        report.events += 1
        switch event {
        case .joined(let member):
            noteStatus(member, from: nil, at: observer)
        case .statusChanged(let member, let previous):
            noteStatus(member, from: previous, at: observer)
        case .metadataChanged(let member):
            guard let process = processByID[member.id], let indices = watchesBySubject[process] else { return }
            for index in indices {
                if case .metadata(let goal) = watches[index].goal, member.metadata == goal { watches[index].see(observer, at: time) }
            }
        case .removed(let id):
            guard let process = processByID[id] else { return }
            closeSpell(observer: observer, subject: process)
            setAlive(observer: observer, subject: process, false)
        case .nameConflict:
            break
        }
    }

    mutating func noteStatus(_ member: Member, from previous: MemberStatus?, at observer: Int) {
        guard let process = processByID[member.id], process != currentProcess[observer] else { return }
        setAlive(observer: observer, subject: process, member.status == .alive)
        let subjectSlot = processes[process].slot
        if processes[process].up && currentProcess[subjectSlot] == process && states[subjectSlot] == .running {
            if member.status == .dead { openSpell(observer: observer, subject: process) } else { closeSpell(observer: observer, subject: process) }
        }
        let subjectIsLive = processes[process].up && currentProcess[subjectSlot] == process && states[subjectSlot] == .running
            && !processes[process].everPaused
        if subjectIsLive && (member.status == .dead || member.status == .suspect) {
            if excusedByPartition(observer, subjectSlot) {
                if member.status == .dead { report.deathsAcrossPartition += 1 }
            } else if member.status == .dead {
                report.falseDeaths += 1
                falseVictims.insert(process)
            } else {
                report.falseSuspicions += 1
            }
        }
        guard let indices = watchesBySubject[process] else { return }
        for index in indices {
            if member.status == .dead { watches[index].deadBy.insert(observer) }
            if member.status == .suspect {
                watches[index].suspectedBy.insert(observer)
                if watches[index].firstSuspected < 0 { watches[index].firstSuspected = time }
            }
            if case .status(let goal) = watches[index].goal, goal == member.status { watches[index].see(observer, at: time) }
        }
    }

    /// Keeps the "sees alive" bit of (observer, subject's slot) for current, up processes only.
    mutating func setAlive(observer: Int, subject process: Int, _ alive: Bool) {
        let subject = processes[process].slot
        guard processes[process].up, currentProcess[subject] == process, states[observer] != .down else { return }
        let bit = observer * capacity + subject
        let mask: UInt64 = 1 << UInt64(bit & 63)
        let was = aliveBits[bit >> 6] & mask != 0
        guard was != alive else { return }
        if alive {
            aliveBits[bit >> 6] |= mask
            aliveCount[observer] += 1
        } else {
            aliveBits[bit >> 6] &= ~mask
            aliveCount[observer] -= 1
        }
    }

    /// Forgets every bit of `slot` as observer and as subject (its process changed or stopped).
    mutating func clearAliveBits(of slot: Int) {
        for observer in 0..<cores.count {
            let bit = observer * capacity + slot
            let mask: UInt64 = 1 << UInt64(bit & 63)
            if aliveBits[bit >> 6] & mask != 0 {
                aliveBits[bit >> 6] &= ~mask
                aliveCount[observer] -= 1
            }
        }
        for subject in 0..<capacity {
            let bit = slot * capacity + subject
            aliveBits[bit >> 6] &= ~(1 << UInt64(bit & 63))
        }
        aliveCount[slot] = 0
    }

    /// Every member up sees every other member up as alive.
    package var converged: Bool {
        let up = upSlots
        return up.allSatisfy { aliveCount[$0] == up.count - 1 }
    }

    mutating func watch(_ kind: Watch.Kind, subject process: Int, goal: Watch.Goal) {
        let observers = upSlots.filter { $0 != processes[process].slot }.map { ($0, currentProcess[$0]) }
        watches.append(Watch(kind: kind, subject: process, goal: goal, start: time, observers: observers, capacity: capacity))
        watchesBySubject[process, default: []].append(watches.count - 1)
    }

    mutating func startSampling() {
        guard !sampling else { return }
        sampling = true
        push(time, .sample)
    }

    /// Convergence is checked every tenth of a probe interval while someone waits for it.
    mutating func sample() {
        sampling = false
        let pending = convergenceWatches.indices.filter { convergenceWatches[$0].reached == nil }
        guard !pending.isEmpty else { return }
        if converged {
            for index in pending { convergenceWatches[index].reached = time }
            return
        }
        sampling = true
        push(time + max(1, scenario.settings.probeInterval.nanoseconds / 10), .sample)
    }

    // MARK: Results

    mutating func finish() -> SimulationReport {
        report.heldDeadAtEnd = deadSpells.count
        for key in deadSpells.keys.sorted() { closeSpell(observer: Int(key >> 32), subject: Int(key & 0xFFFF_FFFF)) }
        report.heldDeadAfterFaultsSeconds = heldDeadAfterFaults >= 0 ? Double(heldDeadAfterFaults) / 1e9 : nil
        report.longestHeldDeadSeconds = longestHeldDead >= 0 ? Double(longestHeldDead) / 1e9 : nil
        report.steps = steps
        report.falseDeathVictims = falseVictims.count
        report.convergences = convergenceWatches.map { watch in
            Convergence(label: watch.label, seconds: watch.reached.map { Double($0 - watch.start) / 1e9 })
        }
        func detection(_ kind: Watch.Kind) -> Detection? {
            var latencies: [Double] = []
            var observers = 0
            var any = false
            var firstSuspicion: Double?
            for watch in watches where watch.kind == kind {
                any = true
                if watch.firstSuspected >= 0, firstSuspicion == nil { firstSuspicion = Double(watch.firstSuspected - watch.start) / 1e9 }
                for (slot, process) in watch.observers where processes[process].up && currentProcess[slot] == process {
                    observers += 1
                    if watch.firstSeen[slot] >= 0 { latencies.append(Double(watch.firstSeen[slot] - watch.start) / 1e9) }
                }
            }
            guard any else { return nil }
            var result = Detection(latencies: latencies, observers: observers)
            result.firstSuspicionSeconds = firstSuspicion
            return result
        }
        report.crashDetection = detection(.crash)
        report.pauseDetection = detection(.pause)
        report.leaveDetection = detection(.leave)
        report.metadataPropagation = detection(.metadata)
        report.joinDetection = detection(.join)
        report.supersededDetection = detection(.restart)
        for watch in watches {
            switch watch.kind {
            case .leave: report.leaversReportedDead += watch.deadBy.count
            case .restart: report.supersededReportedDead += watch.deadBy.count
            case .pause:
                report.pausedDeclaredDead += watch.deadBy.count
                report.pausedSuspected += watch.suspectedBy.count
            default: break
            }
        }
        let window = Double(restWindow.end - restWindow.start) / 1e9
        if window > 0 {
            let members = Double(max(1, scenario.members))
            report.datagramBytesPerMemberPerSecond = Double(restDatagramBytes) / members / window
            report.streamBytesPerMemberPerSecond = Double(restStreamBytes) / members / window
        }
        report.convergedAtEnd = converged
        report.membersAtEnd = upSlots.count
        return report
    }

    // MARK: Inspection (tests and tools)

    /// The view of the member at `slot` (nil when it is down).
    package func members(seenBy slot: Int) -> [Member]? {
        cores[slot]?.members
    }

    /// The id of the process currently at `slot`.
    package func id(of slot: Int) -> NodeID? {
        cores[slot]?.id
    }

    package func stats(of slot: Int) -> MembershipStats? {
        cores[slot]?.stats
    }
}

enum SlotState: Equatable {
    case running, paused, down
}

struct Process {
    var slot: Int
    var id: NodeID
    var up = true
    var everPaused = false
}

struct ActivePartition {
    var id: Int
    /// Group per slot, -1 for none.
    var group: [Int8]
    var healedAt: Int64?

    func separates(_ a: Int, _ b: Int) -> Bool {
        group[a] >= 0 && group[b] >= 0 && group[a] != group[b]
    }
}

enum Delivery {
    case datagram([UInt8], from: Int, to: Int)
    case stream([UInt8], from: Int, process: Int, to: Int)
    case streamFailed(slot: Int, process: Int, to: MemberAddress)
    case unreachable(slot: Int, process: Int, to: MemberAddress)

    var target: Int {
        switch self {
        case .datagram(_, _, let to), .stream(_, _, _, let to): to
        case .streamFailed(let slot, _, _), .unreachable(let slot, _, _): slot
        }
    }
}

struct Pending: Comparable {
    enum Kind {
        case deliver(Delivery)
        case wakeup(slot: Int, process: Int)
        case action(Int)
        case resume(slot: Int, process: Int)
        case heal(id: Int)
        case lossEnd(slot: Int)
        /// A new process at a slot that is down (`crashRestart`).
        case start(slot: Int)
        case sample
    }

    var at: Int64
    var order: UInt64
    var kind: Kind

    static func < (lhs: Pending, rhs: Pending) -> Bool {
        lhs.at != rhs.at ? lhs.at < rhs.at : lhs.order < rhs.order
    }

    static func == (lhs: Pending, rhs: Pending) -> Bool {
        lhs.at == rhs.at && lhs.order == rhs.order
    }
}

/// Follows one subject (a crashed, leaving, paused, restarted, joining member, or new metadata):
/// when each observer first saw the goal, and who declared it dead or suspect.
struct Watch {
    enum Kind { case crash, leave, pause, restart, join, metadata }
    enum Goal {
        case status(MemberStatus)
        case metadata(MemberMetadata)
    }

    var kind: Kind
    var subject: Int
    var goal: Goal
    var start: Int64
    /// (slot, process) up when the watch began.
    var observers: [(Int, Int)]
    var firstSeen: [Int64]
    var deadBy: Set<Int> = []
    var suspectedBy: Set<Int> = []
    var firstSuspected: Int64 = -1

    init(kind: Kind, subject: Int, goal: Goal, start: Int64, observers: [(Int, Int)], capacity: Int) {
        self.kind = kind
        self.subject = subject
        self.goal = goal
        self.start = start
        self.observers = observers
        self.firstSeen = [Int64](repeating: -1, count: capacity)
    }

    mutating func see(_ observer: Int, at time: Int64) {
        if firstSeen[observer] < 0 { firstSeen[observer] = time }
    }
}
