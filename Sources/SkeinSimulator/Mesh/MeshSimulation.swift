import HeapModule
import NIOCore
import SkeinMembership
import SkeinRelay
import SkeinWire

/// N complete relays (`RelayLoop`: relay core, membership, and the rules between them) joined by
/// a simulated network, with simulated clients on every relay, on virtual time. Every client
/// checks what it receives against the mesh's promises as it arrives (`MeshInvariants`); the
/// first broken promise is reported with the seed and the event that broke it.
///
/// What it models: datagrams (loss, delay, jitter), peer links (dialed on first use, ordered per
/// direction, broken by crashes, resets and long partitions; frames on a link across a partition
/// wait, and are lost only if the link breaks), dials that fail (refused by a crashed host,
/// timed out across a partition or to a paused one), processes that crash and restart at the
/// same address with a new identity, and pauses (inputs wait, timers fire late).
/// Client↔relay traffic is immediate and always writable.
package struct MeshSimulation {
    let scenario: MeshScenario
    var time: Int64 = 0
    var queue = Heap<MeshPending>()
    var sequence: UInt64 = 0
    var random: SimulationRandom
    var relays: [SimRelay] = []
    var slotByAddress: [MemberAddress: Int] = [:]
    var slotByNode: [NodeID: (slot: Int, process: Int)] = [:]
    /// Every identity a slot ever had (a crashed process's too).
    var slotOfIdentity: [NodeID: Int] = [:]
    var links: [LinkKey: SimLink] = [:]
    var linkKeys: [Int: LinkKey] = [:]
    var nextLinkID = 0
    var clients: [SimClient] = []
    var partition: Set<Int>?
    var lossAt: [Int: Double] = [:]
    var invariants = MeshInvariants()
    var report: MeshReport
    var trafficStart: Int64 { Int64(scenario.warmup * 1e9) }
    var trafficEnd: Int64 { trafficStart + Int64(scenario.seconds * 1e9) }
    var runEnd: Int64 { trafficEnd + Int64(scenario.drain * 1e9) }
    var actions: [RelayAction] = []

    package init(_ scenario: MeshScenario) {
        self.scenario = scenario
        self.random = SimulationRandom(seed: scenario.seed)
        self.report = MeshReport(scenario: scenario)
    }

    // MARK: - Running

    package mutating func run() -> MeshReport {
        for slot in 0..<scenario.relays {
            relays.append(SimRelay(address: MemberAddress(host: "10.\(slot >> 16).\((slot >> 8) & 0xff).\(slot & 0xff)", port: 7946)))
            slotByAddress[relays[slot].address] = slot
        }
        for slot in 0..<scenario.relays { start(slot) }
        for (index, fault) in scenario.faults.enumerated() {
            push(trafficStart + Int64(fault.at * 1e9), .fault(index))
        }
        push(trafficEnd, .trafficEnd)
        while let next = queue.min {
            guard next.at <= runEnd, invariants.firstViolation == nil else { break }
            _ = queue.popMin()
            time = next.at
            step(next.kind)
        }
        time = min(time, runEnd)
        settleTunnels()
        return finish()
    }

    mutating func push(_ at: Int64, _ kind: MeshPending.Kind) {
        sequence += 1
        queue.insert(MeshPending(at: at, sequence: sequence, kind: kind))
    }

    var now: NIODeadline { NIODeadline.uptimeNanoseconds(UInt64(time)) }

    mutating func step(_ kind: MeshPending.Kind) {
        switch kind {
        case .input(let slot, let process, let input):
            deliver(input, to: slot, process: process)
        case .timer(let slot, let process, let at):
            guard relays[slot].process == process, relays[slot].timerAt == at else { return }
            relays[slot].timerAt = nil
            deliver(.timer, to: slot, process: process)
        case .clientTick(let client):
            clientTick(client)
        case .clientSend(let client, let frame):
            clientSend(client, frame)
        case .linkUp(let id):
            linkUp(id)
        case .linkFrame(let id, let from, let frame):
            linkFrame(id, from: from, frame)
        case .linkBreak(let id):
            if let key = linkKeys[id] { breakLink(key, notifyAfter: 0) }
        case .dialFailed(let id, let refused):
            dialFailed(id, refused: refused)
        case .fault(let index):
            fault(scenario.faults[index])
        case .faultEnd(let index):
            faultEnd(scenario.faults[index])
        case .restart(let slot):
            if relays[slot].loop == nil { start(slot) }
        case .gateway(let slot, let process, let input):
            gatewayInput(input, at: slot, process: process)
        case .trafficEnd:
            break
        }
    }

    // MARK: - Relays

    mutating func start(_ slot: Int) {
        var relay = relays[slot]
        relay.process += 1
        relay.state = .running
        relay.inbox = []
        relay.timerAt = nil
        var idRandom = SimulationRandom(seed: scenario.seed ^ UInt64(slot) << 20 ^ UInt64(relay.process))
        let node = NodeID(high: idRandom.next(), low: idRandom.next())
        relay.node = node
        let core = RelayCore(settings: settings(slot), zone: "", seed: idRandom.next())
        var mesh = RelayLoopMesh(id: node, name: "relay-\(slot)", address: relay.address, membership: scenario.membership)
        mesh.metadataDelay = .milliseconds(50)
        relay.loop = try! RelayLoop(core: core, mesh: mesh, seed: idRandom.next(), now: now, generation: UInt64(time / 1_000_000) + 1)
        relays[slot] = relay
        slotByNode[node] = (slot, relay.process)
        slotOfIdentity[node] = slot
        report.relayStarts += 1
        // Join through the first relay of its network (and one more, in case it is the one down).
        let (first, size) = networkSlots(slot)
        var seeds: [MemberAddress] = []
        if slot != first { seeds.append(relays[first].address) }
        if size > 2 { seeds.append(relays[first + (slot - first + size / 2) % size].address) }
        deliver(.join(seeds.filter { $0 != relay.address }), to: slot, process: relay.process)
        startClients(slot)
        if isGateway(slot) { startGateway(slot) }
    }

    mutating func crash(_ slot: Int) {
        guard relays[slot].loop != nil else { return }
        let process = relays[slot].process
        relays[slot].loop = nil
        relays[slot].gateway = nil
        relays[slot].state = .down
        relays[slot].timerAt = nil
        relays[slot].inbox = []
        slotByNode[relays[slot].node] = nil
        // Its links end: the other side sees a broken link soon (a kernel RST or FIN).
        for key in links.keys.sorted() where key.a == slot || key.b == slot {
            breakLink(key, notifyAfter: 1_000_000)
        }
        // Its clients lose their connection: what they wait for ends with it.
        for index in relays[slot].clients where clients[index].process == process {
            clients[index].connected = false
            invariants.connectionLost(&clients[index], at: time)
        }
        relays[slot].clients = []
    }

    /// Hands an input to a relay's loop and carries out what it says, then re-arms its timer.
    mutating func deliver(_ input: RelayInput, to slot: Int, process: Int) {
        guard relays[slot].process == process, relays[slot].loop != nil else { return }
        if relays[slot].state == .paused {
            relays[slot].inbox.append(input)
            return
        }
        report.inputs += 1
        actions.removeAll(keepingCapacity: true)
        relays[slot].loop!.handle(input, now: now, actions: &actions)
        var index = 0
        while index < actions.count {
            let action = actions[index]
            index += 1
            perform(action, at: slot)
        }
        armTimer(slot)
    }

    mutating func armTimer(_ slot: Int) {
        guard let loop = relays[slot].loop, let next = loop.nextDeadline else { return }
        let at = max(Int64(next.uptimeNanoseconds), time)
        if let armed = relays[slot].timerAt, armed <= at { return }
        relays[slot].timerAt = at
        push(at, .timer(slot: slot, process: relays[slot].process, at: at))
    }

    mutating func perform(_ action: RelayAction, at slot: Int) {
        switch action {
        case .send(let connection, let frame):
            guard let client = relays[slot].connections[connection] else { return }
            clientReceived(client, frame)
        case .disconnect(let connection):
            guard let client = relays[slot].connections.removeValue(forKey: connection) else { return }
            clients[client].connected = false
            invariants.connectionLost(&clients[client], at: time)
            push(time, .input(slot: slot, process: relays[slot].process, .clientClosed(connection, unparsedBytes: 0)))
        case .pauseReading(let connection):
            if let client = relays[slot].connections[connection] { clients[client].reading = false }
        case .resumeReading(let connection):
            if let client = relays[slot].connections[connection] { clients[client].reading = true }
        case .sendPeer(let node, let frame):
            if let (to, process) = slotByNode[node], relays[to].process == process, links[LinkKey(slot, to)]?.isUp == true {
                transmit(frame, on: LinkKey(slot, to), from: slot)
            } else {
                relays[slot].loop!.handle(.peerUnsent(node, frame), now: now, actions: &actions)
            }
        case .sendPeerAt(let address, let frame):
            guard let to = slotByAddress[address], to != slot else { return }
            send(frame, from: slot, to: to)
        case .sendDatagram(let bytes, let address):
            guard let to = slotByAddress[address] else { return }
            datagram(bytes, from: slot, to: to)
        case .resetPeerLinks(let node, _):
            if let other = slotOfIdentity[node], relays[other].node == node { breakLink(LinkKey(slot, other), notifyAfter: 0) }
        case .report(let event):
            report.note(event)
        }
    }

    // MARK: - The network

    func blocked(_ a: Int, _ b: Int) -> Bool {
        guard let partition else { return false }
        return partition.contains(a) != partition.contains(b)
    }

    mutating func lost(_ a: Int, _ b: Int) -> Bool {
        let keep = (1 - scenario.network.datagramLoss) * (1 - (lossAt[a] ?? 0)) * (1 - (lossAt[b] ?? 0))
        return keep < 1 && random.unit() >= keep
    }

    mutating func datagram(_ bytes: [UInt8], from: Int, to: Int) {
        report.datagrams += 1
        guard relays[to].loop != nil, !blocked(from, to), !lost(from, to) else { return }
        let delay = scenario.network.datagramDelay.nanoseconds + random.nanoseconds(upTo: scenario.network.datagramJitter.nanoseconds)
        push(time + delay, .input(slot: to, process: relays[to].process, .datagram(bytes, from: relays[from].address)))
    }

    /// A frame for the relay at `to`: on the link between the two, dialed if there is none.
    mutating func send(_ frame: PeerFrame, from: Int, to: Int) {
        let key = LinkKey(from, to)
        if let link = links[key] {
            if link.isUp {
                transmit(frame, on: key, from: from)
            } else {
                links[key]!.queued.append((from, frame))
            }
            return
        }
        _ = dial(from: from, to: to, gateway: false)
        links[key]!.queued.append((from, frame))
    }

    /// A new link from `from` to `to`: up one round trip later, refused by a crashed host, or
    /// timed out across a partition or to a paused one. Returns its id.
    mutating func dial(from: Int, to: Int, gateway: Bool) -> Int {
        let key = LinkKey(from, to)
        nextLinkID += 1
        var link = SimLink(id: nextLinkID, key: key, initiator: from, processes: (relays[key.a].process, relays[key.b].process))
        link.isGateway = gateway
        links[key] = link
        linkKeys[link.id] = key
        report.dials += 1
        if relays[to].loop == nil {
            push(time + 1_000_000, .dialFailed(link.id, refused: true))
        } else if blocked(from, to) || relays[to].state == .paused {
            push(time + scenario.connectTimeout.nanoseconds, .dialFailed(link.id, refused: false))
        } else {
            push(time + 2 * streamDelay(from, to), .linkUp(link.id))
        }
        return link.id
    }

    func streamDelay(_ a: Int, _ b: Int) -> Int64 {
        let jitter = scenario.network.streamJitter.nanoseconds
        let share = jitter > 0 ? Int64(pairHash(min(a, b), max(a, b), seed: scenario.seed) % UInt64(jitter + 1)) : 0
        return scenario.network.streamDelay.nanoseconds + share
    }

    mutating func linkUp(_ id: Int) {
        guard let key = linkKeys[id], let link = links[key], !link.isUp else { return }
        guard relays[key.a].process == link.processes.0, relays[key.b].process == link.processes.1,
            relays[key.a].loop != nil, relays[key.b].loop != nil
        else {
            dialFailed(id, refused: true)
            return
        }
        if blocked(key.a, key.b) || relays[key.b].state == .paused && link.initiator == key.a
            || relays[key.a].state == .paused && link.initiator == key.b
        {
            push(time + scenario.connectTimeout.nanoseconds, .dialFailed(id, refused: false))
            return
        }
        links[key]!.isUp = true
        let queued = links[key]!.queued
        links[key]!.queued = []
        if link.isGateway {
            for (slot, process) in [(key.a, link.processes.0), (key.b, link.processes.1)] {
                gatewayInput(.linkUp(id), at: slot, process: process)
            }
        } else {
            deliver(.peerLinkUp(relays[key.b].node), to: key.a, process: link.processes.0)
            deliver(.peerLinkUp(relays[key.a].node), to: key.b, process: link.processes.1)
        }
        for (from, frame) in queued { transmit(frame, on: key, from: from) }
    }

    mutating func dialFailed(_ id: Int, refused: Bool) {
        guard let key = linkKeys[id], let link = links[key], !link.isUp else { return }
        links[key] = nil
        linkKeys[id] = nil
        report.dialsFailed += 1
        let initiator = link.initiator
        let target = key.other(initiator)
        let process = initiator == key.a ? link.processes.0 : link.processes.1
        if link.isGateway {
            // Both sides: the other may have joined this dial with its own (one link per pair).
            let reason = refused ? "connection refused" : "dial timed out"
            gatewayInput(.linkDown(id, reason: reason), at: initiator, process: process)
            gatewayInput(.linkDown(id, reason: reason), at: target, process: target == key.a ? link.processes.0 : link.processes.1)
            return
        }
        deliver(.peerLinkDown(.dialFailed(relays[target].address, refused: refused)), to: initiator, process: process)
    }

    /// Frames on an established link arrive in order, one stream delay later (more under loss:
    /// retransmission); across a partition they wait for it to heal or the link to break.
    mutating func transmit(_ frame: PeerFrame, on key: LinkKey, from: Int) {
        guard var link = links[key] else { return }
        let to = key.other(from)
        report.peerFrames += 1
        var at = time + streamDelay(from, to)
        if (lossAt[from] ?? 0) > 0 || (lossAt[to] ?? 0) > 0 || scenario.network.datagramLoss > 0 {
            var timeout: Int64 = 200_000_000
            var attempts = 0
            while attempts < 6, lost(from, to) {
                at += timeout
                timeout *= 2
                attempts += 1
            }
        }
        let direction = from == key.a ? 0 : 1
        at = max(at, link.lastArrival[direction])
        link.lastArrival[direction] = at
        links[key] = link
        push(at, .linkFrame(link.id, from: from, frame))
    }

    mutating func linkFrame(_ id: Int, from: Int, _ frame: PeerFrame) {
        guard let key = linkKeys[id], let link = links[key] else { return }
        let to = key.other(from)
        if blocked(from, to) {
            // Held in the sockets until the partition heals (or the link breaks).
            links[key]!.held.append((from, frame))
            return
        }
        let process = to == key.a ? link.processes.0 : link.processes.1
        if link.isGateway {
            gatewayInput(.frame(id, frame), at: to, process: process)
        } else if case .membership(let bytes) = frame {
            deliver(.membershipStream(Array(bytes.readableBytesView), from: relays[from].address), to: to, process: process)
        } else {
            deliver(.peerFrame(relays[from].node, frame), to: to, process: process)
        }
    }

    /// Ends a link: what it held is lost, and each live end hears it broke.
    mutating func breakLink(_ key: LinkKey, notifyAfter delay: Int64) {
        guard let link = links.removeValue(forKey: key) else { return }
        linkKeys[link.id] = nil
        report.linksBroken += 1
        guard link.isUp else {
            let process = link.initiator == key.a ? link.processes.0 : link.processes.1
            if link.isGateway {
                for (slot, process) in [(key.a, link.processes.0), (key.b, link.processes.1)] {
                    push(time + delay, .gateway(slot: slot, process: process, .linkDown(link.id, reason: "dial failed")))
                }
                return
            }
            push(time + delay, .input(slot: link.initiator, process: process, .peerLinkDown(.dialFailed(relays[key.other(link.initiator)].address, refused: true))))
            return
        }
        if link.isGateway {
            push(time + delay, .gateway(slot: key.a, process: link.processes.0, .linkDown(link.id, reason: "link broken")))
            push(time + delay, .gateway(slot: key.b, process: link.processes.1, .linkDown(link.id, reason: "link broken")))
            return
        }
        push(time + delay, .input(slot: key.a, process: link.processes.0, .peerLinkDown(.broken(relays[key.b].node))))
        push(time + delay, .input(slot: key.b, process: link.processes.1, .peerLinkDown(.broken(relays[key.a].node))))
    }

    // MARK: - Faults

    mutating func fault(_ fault: MeshFault) {
        report.faults.append(fault.label)
        guard let index = scenario.faults.firstIndex(of: fault) else { return }
        switch fault.kind {
        case .crashRestart(let slot, let downFor):
            guard slot < relays.count, relays[slot].loop != nil else { return }
            crash(slot)
            push(time + Int64(downFor * 1e9), .restart(slot))
        case .pause(let slot, let duration):
            guard slot < relays.count, relays[slot].state == .running else { return }
            relays[slot].state = .paused
            relays[slot].pausedUntil = max(relays[slot].pausedUntil, time + Int64(duration * 1e9))
            push(time + Int64(duration * 1e9), .faultEnd(index))
        case .partition(let side, let duration):
            guard partition == nil else { return }
            partition = Set(side)
            for key in links.keys.sorted() where blocked(key.a, key.b) {
                let id = links[key]!.id
                push(time + scenario.linkBreakDelay.nanoseconds, .linkBreak(id))
            }
            push(time + Int64(duration * 1e9), .faultEnd(index))
        case .loss(let slot, let probability, let duration):
            lossAt[slot] = probability
            push(time + Int64(duration * 1e9), .faultEnd(index))
        }
    }

    mutating func faultEnd(_ fault: MeshFault) {
        switch fault.kind {
        case .crashRestart:
            break
        case .pause(let slot, _):
            guard relays[slot].state == .paused, relays[slot].pausedUntil <= time else { return }
            relays[slot].state = .running
            let waiting = relays[slot].inbox
            relays[slot].inbox = []
            let process = relays[slot].process
            for input in waiting { deliver(input, to: slot, process: process) }
            deliver(.timer, to: slot, process: process)
            // Its clients' frames were waiting too.
            for client in relays[slot].clients where clients[client].process == process { scheduleTick(client, in: 0) }
        case .partition:
            partition = nil
            // What the links held is delivered now, in order.
            for key in links.keys.sorted() {
                let held = links[key]!.held
                guard !held.isEmpty else { continue }
                links[key]!.held = []
                let id = links[key]!.id
                for (from, frame) in held { push(time, .linkFrame(id, from: from, frame)) }
            }
        case .loss(let slot, _, _):
            lossAt[slot] = nil
        }
    }

    // MARK: - Clients

    mutating func startClients(_ slot: Int) {
        let n = scenario.relays
        var roles: [SimClient.Role] = [.requester, .subscriber]
        if slot % 2 == 0 || n == 1 { roles.append(.member) }
        if slot % 3 == 0 { roles.append(.publisher) }
        if slot % 5 == 0 { roles.append(.broadcaster) }
        if slot % 4 == 1 || n == 1 { roles.append(.tunneler) }
        if scenario.networks > 1 && isGateway(slot) { roles.append(.privateMember) }
        let process = relays[slot].process
        for role in roles {
            let index = clients.count
            let dialect: ProtocolDialect = (slot + index) % 2 == 0 ? .iris : .skein1
            relays[slot].nextConnection += 1
            let connection = ConnectionID(relays[slot].nextConnection)
            clients.append(SimClient(index: index, role: role, slot: slot, process: process, connection: connection, dialect: dialect))
            clients[index].network = network(slot)
            relays[slot].clients.append(index)
            relays[slot].connections[connection] = index
            report.clients += 1
            deliver(.clientOpened(connection), to: slot, process: process)
            let cluster = switch role {
            case .member: "svc"
            case .privateMember: "private"
            default: ""
            }
            deliver(.clientFrame(connection, .initialize(magic: RelayProtocol.clientMagic, version: dialect.version, cluster: cluster)), to: slot, process: process)
        }
    }

    /// The period of one client's traffic, so the mesh offers the scenario's rates.
    func period(_ role: SimClient.Role) -> Int64? {
        let n = Double(scenario.relays)
        let (rate, share): (Double, Double) = switch role {
        case .requester: (scenario.requestRate, n)
        case .publisher: (scenario.publishRate, (n / 3).rounded(.up))
        case .broadcaster: (scenario.broadcastRate, (n / 5).rounded(.up))
        case .tunneler: (scenario.tunnelRate, n == 1 ? 1 : ((n - 1) / 4).rounded(.up))
        case .subscriber: (scenario.resubscribeEvery > 0 ? 1 / scenario.resubscribeEvery : 0, 1)
        case .member, .privateMember: (0, 1)
        }
        guard rate > 0 else { return nil }
        return Int64(1e9 * share / rate)
    }

    mutating func scheduleTick(_ client: Int, in delay: Int64?) {
        guard let period = period(clients[client].role) else { return }
        let wait = delay ?? (period / 2 + random.nanoseconds(upTo: period))
        push(max(time + wait, trafficStart + random.nanoseconds(upTo: period)), .clientTick(client))
    }

    mutating func clientReceived(_ index: Int, _ frame: RelayFrame) {
        var client = clients[index]
        if case .initialize = frame, !client.open {
            client.open = true
            clients[index] = client
            if client.role == .subscriber {
                clientSend(index, .subscribe(topic: "t"))
                if scenario.networks > 1 {
                    // The other network's topic, and one it does not export.
                    let other = otherNetwork(client.slot)
                    clientSend(index, .subscribe(topic: "t@\(other)"))
                    clientSend(index, .subscribe(topic: "secret@\(other)"))
                }
            }
            scheduleTick(index, in: nil)
            return
        }
        report.clientFrames += 1
        switch frame {
        case .tunnelInit, .tunnelConfirm, .tunnelAllow, .tunnelTransfer, .tunnelClose, .tunnelFailed:
            clients[index] = client
            tunnelFrame(index, frame)
            return
        case .request(let id, let body, _):
            // A member answers with the body it got, a moment later.
            if client.role != .member && client.role != .privateMember {
                invariants.violation("a request reached \(client.name), which is no member", at: time)
            }
            if client.role == .privateMember, let (sender, _) = SimClient.decode(body), sender < clients.count, clients[sender].network != client.network {
                invariants.violation("\(client.name): a request from \(clients[sender].name) reached cluster private, which \(client.network) does not export", at: time)
            }
            invariants.checks += 1
            push(time + scenario.serviceTime.nanoseconds, .clientSend(index, .reply(id: id, outcome: .success(body))))
        default:
            invariants.received(frame, by: &client, at: time, pausedRelay: relays[client.slot].pausedUntil)
        }
        clients[index] = client
    }

    mutating func clientTick(_ index: Int) {
        let client = clients[index]
        guard client.connected, client.open, time < trafficEnd else { return }
        guard client.reading || client.role == .subscriber else {
            // Paused by the relay (backpressure): it sends nothing until resumed.
            scheduleTick(index, in: nil)
            return
        }
        switch client.role {
        case .requester:
            let id = clients[index].nextSequence()
            let body = SimClient.body(sender: index, sequence: id)
            let deadline = time + scenario.requestTimeout.nanoseconds
            // Federated: a third to the other network's svc, one in ten to its private cluster.
            let cluster = scenario.networks < 2 ? "svc"
                : id % 10 == 5 ? "private@\(otherNetwork(client.slot))"
                : id % 3 == 1 ? "svc@\(otherNetwork(client.slot))" : "svc"
            clients[index].outstanding[id] = SimClient.Outstanding(body: body, sentAt: time, deadline: deadline, cluster: cluster)
            report.requests += 1
            clientSend(index, .request(id: id, cluster: cluster, body: body, timeoutMillis: UInt64(scenario.requestTimeout.nanoseconds / 1_000_000)))
        case .publisher:
            report.publishes += 1
            // Federated: every fifth event goes to a topic no network exports (numbered apart,
            // so the events on `t` stay consecutive).
            clients[index].ticks += 1
            if scenario.networks > 1 && clients[index].ticks % 5 == 0 {
                clientSend(index, .publish(topic: "secret", event: SimClient.body(sender: index, sequence: clients[index].ticks)))
            } else {
                let sequence = clients[index].nextSequence()
                clientSend(index, .publish(topic: "t", event: SimClient.body(sender: index, sequence: sequence)))
            }
        case .broadcaster:
            let sequence = clients[index].nextSequence()
            report.broadcasts += 1
            clientSend(index, .broadcast(cluster: "svc", message: SimClient.body(sender: index, sequence: sequence)))
        case .subscriber:
            // Drop the subscription and take it again: nothing may arrive in between.
            clientSend(index, .unsubscribe(topic: "t"))
            clientSend(index, .subscribe(topic: "t"))
        case .tunneler:
            openTunnel(index)
        case .member, .privateMember:
            break
        }
        scheduleTick(index, in: nil)
    }

    mutating func clientSend(_ index: Int, _ frame: ClientFrame) {
        let client = clients[index]
        guard client.connected, relays[client.slot].process == client.process else { return }
        if case .subscribe(let topic) = frame { clients[index].topics.insert(topic) }
        if case .unsubscribe(let topic) = frame { clients[index].topics.remove(topic) }
        deliver(.clientFrame(client.connection, frame), to: client.slot, process: client.process)
    }

    // MARK: - The end

    mutating func finish() -> MeshReport {
        // Every request sent long enough before the end must have had its answer.
        for index in clients.indices where clients[index].connected {
            report.pendingAtEnd += clients[index].outstanding.count
            // A paused relay reads a request only when it resumes, and times it from then.
            let paused = relays[clients[index].slot].pausedUntil
            for (id, outstanding) in clients[index].outstanding.sorted(by: { $0.key < $1.key })
            where max(outstanding.deadline, paused >= outstanding.sentAt ? paused + scenario.requestTimeout.nanoseconds : 0) + 1_000_000_000 < time {
                invariants.violation("\(clients[index].name): request \(id) (sent at \(seconds(outstanding.sentAt)) s) never got an answer", at: time)
                break
            }
        }
        checkTunnelsEnded()
        report.invariantChecks = invariants.checks
        report.answers = invariants.answers
        report.eventsDelivered = invariants.events
        report.federatedEvents = invariants.federatedEvents
        report.federatedReplies = invariants.federatedReplies
        report.broadcastsDelivered = invariants.broadcastsDelivered
        report.gaps = invariants.gaps
        report.violation = invariants.firstViolation
        report.virtualSeconds = Double(time) / 1e9
        report.aliveViews = aliveViews()
        return report
    }

    /// How many (observer, subject) pairs of running relays see each other alive at the end.
    func aliveViews() -> (seen: Int, pairs: Int) {
        var seen = 0
        var pairs = 0
        let running = relays.indices.filter { relays[$0].loop != nil }
        for observer in running {
            guard let membership = relays[observer].loop?.membership else { continue }
            let alive = Set(membership.members.filter { $0.status == .alive }.map(\.id))
            for subject in running where subject != observer && network(subject) == network(observer) {
                pairs += 1
                if alive.contains(relays[subject].node) { seen += 1 }
            }
        }
        return (seen, pairs)
    }
}

func seconds(_ nanoseconds: Int64) -> String { format(Double(nanoseconds) / 1e9) }

// MARK: - State

struct SimRelay {
    enum State { case running, paused, down }
    var address: MemberAddress
    var process = 0
    var node = NodeID(high: 0, low: 0)
    var state = State.down
    var loop: RelayLoop?
    var timerAt: Int64?
    /// A gateway's links to the other network, decided by the relay's own machine.
    var gateway: GatewayLinkMachine?
    var gatewayTimerAt: Int64?
    var inbox: [RelayInput] = []
    var pausedUntil: Int64 = -1
    var clients: [Int] = []
    var connections: [ConnectionID: Int] = [:]
    var nextConnection: UInt64 = 0

    init(address: MemberAddress) { self.address = address }
}

struct LinkKey: Hashable, Comparable {
    let a: Int
    let b: Int
    init(_ x: Int, _ y: Int) {
        a = min(x, y)
        b = max(x, y)
    }
    func has(_ slot: Int) -> Bool { a == slot || b == slot }
    func other(_ slot: Int) -> Int { slot == a ? b : a }
    static func < (l: Self, r: Self) -> Bool { (l.a, l.b) < (r.a, r.b) }
}

struct SimLink {
    let id: Int
    let key: LinkKey
    let initiator: Int
    /// The processes of `key.a` and `key.b` the link was made between.
    let processes: (Int, Int)
    var isUp = false
    /// The gateway link between two networks (not a peer link of one mesh).
    var isGateway = false
    var queued: [(Int, PeerFrame)] = []
    var held: [(Int, PeerFrame)] = []
    var lastArrival: [Int64] = [0, 0]

    init(id: Int, key: LinkKey, initiator: Int, processes: (Int, Int)) {
        self.id = id
        self.key = key
        self.initiator = initiator
        self.processes = processes
    }
}

struct MeshPending: Comparable {
    enum Kind {
        case input(slot: Int, process: Int, RelayInput)
        case timer(slot: Int, process: Int, at: Int64)
        case clientTick(Int)
        case clientSend(Int, ClientFrame)
        case linkUp(Int)
        case linkFrame(Int, from: Int, PeerFrame)
        case linkBreak(Int)
        case dialFailed(Int, refused: Bool)
        case fault(Int)
        case faultEnd(Int)
        case restart(Int)
        /// Federated: an input to a gateway's `GatewayLinkMachine`.
        case gateway(slot: Int, process: Int, GatewayInput)
        case trafficEnd
    }
    var at: Int64
    var sequence: UInt64
    var kind: Kind
    static func < (l: Self, r: Self) -> Bool { (l.at, l.sequence) < (r.at, r.sequence) }
    static func == (l: Self, r: Self) -> Bool { l.sequence == r.sequence }
}
