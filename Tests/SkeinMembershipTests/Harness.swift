import NIOCore
import Testing

@testable import SkeinMembership

/// Shuttles directives between cores on a fake clock, with 1 ms latency and optional cuts.
struct Mesh {
    enum Channel { case datagram, stream }

    struct InFlight {
        var at: NIODeadline
        var order: Int
        var channel: Channel
        var bytes: [UInt8]
        var from: MemberAddress
        var to: MemberAddress
    }

    var nodes: [MemberAddress: Membership] = [:]
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var latency = TimeAmount.milliseconds(1)
    var inFlight: [InFlight] = []
    var order = 0
    /// (from, to) pairs whose datagrams are dropped.
    var cutDatagrams: Set<[MemberAddress]> = []
    /// (from, to) pairs whose stream messages fail (the sender hears `streamFailed`).
    var cutStreams: Set<[MemberAddress]> = []
    var events: [MemberAddress: [(NIODeadline, MembershipEvent)]] = [:]
    /// Every datagram handed to the network: (from, to, bytes).
    var datagramLog: [(MemberAddress, MemberAddress, [UInt8])] = []
    /// Stopped processes (SIGSTOP): no timers run, and what reaches them waits in their socket
    /// buffers (datagrams and stream messages alike) until `resume`.
    var paused: Set<MemberAddress> = []
    var held: [InFlight] = []
    /// Fraction of datagrams lost, and of stream segments lost (each loss delays a stream message
    /// by TCP's retransmission timeout, 200 ms doubling, as a reliable stream would).
    var lossRate = 0.0
    var lossRandom = MembershipRandom(seed: 1)

    static func address(_ port: UInt16) -> MemberAddress { MemberAddress(host: "10.0.0.1", port: port) }

    @discardableResult
    mutating func add(
        _ port: UInt16, name: String? = nil, idLow: UInt64? = nil, settings: MembershipSettings = .fastLocal,
        metadata: MemberMetadata = MemberMetadata(zone: "z"), generation: UInt64 = 0
    ) -> MemberAddress {
        let address = Mesh.address(port)
        let id = NodeID(high: 0, low: idLow ?? UInt64(port))
        nodes[address] = try! Membership(
            id: id, name: name ?? "node-\(port)", address: address, metadata: metadata, settings: settings,
            seed: UInt64(port) &* 7919 &+ (idLow ?? 0), now: now, generation: generation)
        return address
    }

    func node(_ address: MemberAddress) -> Membership { nodes[address]! }

    /// kill -9: the process is gone, and its stream port refuses connections.
    mutating func crash(_ address: MemberAddress) { nodes[address] = nil }

    mutating func pause(_ address: MemberAddress) { paused.insert(address) }

    /// SIGCONT: the buffered messages are read now (after the timers that came due meanwhile,
    /// the harder order for the core).
    mutating func resume(_ address: MemberAddress) {
        paused.remove(address)
        for message in held where message.to == address {
            inFlight.append(InFlight(at: now, order: message.order, channel: message.channel, bytes: message.bytes, from: message.from, to: message.to))
        }
        held.removeAll { $0.to == address }
    }

    mutating func cut(_ a: [MemberAddress], _ b: [MemberAddress]) {
        for x in a { for y in b { cutDatagrams.insert([x, y]); cutDatagrams.insert([y, x]); cutStreams.insert([x, y]); cutStreams.insert([y, x]) } }
    }

    mutating func heal() {
        cutDatagrams = []
        cutStreams = []
    }

    mutating func perform(_ directives: [MembershipDirective], from: MemberAddress) {
        for directive in directives {
            switch directive {
            case .sendDatagram(let bytes, let to):
                datagramLog.append((from, to, bytes))
                if lossRate > 0 && Double.random(in: 0..<1, using: &lossRandom) < lossRate { continue }
                order += 1
                inFlight.append(InFlight(at: now + latency, order: order, channel: .datagram, bytes: bytes, from: from, to: to))
            case .sendStream(let bytes, let to):
                var delay = latency
                var timeout = TimeAmount.milliseconds(200)
                while lossRate > 0 && Double.random(in: 0..<1, using: &lossRandom) < lossRate {
                    delay = delay + timeout
                    timeout = timeout * 2
                }
                order += 1
                inFlight.append(InFlight(at: now + delay, order: order, channel: .stream, bytes: bytes, from: from, to: to))
            case .event(let event):
                events[from, default: []].append((now, event))
            }
        }
    }

    mutating func call(_ address: MemberAddress, _ body: (inout Membership, NIODeadline) -> [MembershipDirective]) {
        let at = now
        let directives = body(&nodes[address]!, at)
        perform(directives, from: address)
    }

    mutating func joinAll(_ addresses: [MemberAddress], seed: MemberAddress) {
        for address in addresses where address != seed {
            call(address) { $0.join(seeds: [seed], now: $1) }
        }
    }

    /// Runs the mesh until `now + duration`.
    mutating func run(for duration: TimeAmount) {
        let end = now + duration
        while true {
            let nextMessage = inFlight.min { ($0.at, $0.order) < ($1.at, $1.order) }
            let nextTick = nodes.filter { !paused.contains($0.key) }.map(\.value.nextWakeup).min() ?? .distantFuture
            let next = min(nextMessage?.at ?? .distantFuture, nextTick)
            guard next <= end else { break }
            now = max(now, next)
            if let message = nextMessage, message.at <= nextTick {
                inFlight.removeAll { $0.order == message.order }
                deliver(message)
            } else {
                for address in nodes.keys.sorted(by: { $0.port < $1.port }) where nodes[address]!.nextWakeup <= now && !paused.contains(address) {
                    call(address) { $0.tick(now: $1) }
                }
            }
        }
        now = end
    }

    mutating func deliver(_ message: InFlight) {
        if paused.contains(message.to) {
            held.append(message)
            return
        }
        switch message.channel {
        case .datagram:
            guard nodes[message.to] != nil, !cutDatagrams.contains([message.from, message.to]) else { return }
            call(message.to) { $0.receiveDatagram(message.bytes, from: message.from, now: $1) }
        case .stream:
            guard nodes[message.to] != nil, !cutStreams.contains([message.from, message.to]) else {
                if nodes[message.from] != nil {
                    let target = message.to
                    // Nobody listening refuses the connection; a cut path just fails.
                    let refused = nodes[target] == nil && !cutStreams.contains([message.from, target])
                    call(message.from) { $0.streamFailed(to: target, now: $1, refused: refused) }
                }
                return
            }
            call(message.to) { $0.receiveStream(message.bytes, from: message.from, now: $1) }
        }
    }

    /// `observer`'s view: id → status, self included.
    func view(_ observer: MemberAddress) -> [NodeID: MemberStatus] {
        var out: [NodeID: MemberStatus] = [:]
        for member in node(observer).members { out[member.id] = member.status }
        return out
    }

    func status(of target: MemberAddress, at observer: MemberAddress) -> MemberStatus? {
        view(observer)[node(target).id]
    }

    /// True when every node sees exactly the live nodes, all alive.
    func converged() -> Bool {
        let ids = Set(nodes.values.map(\.id))
        return nodes.keys.allSatisfy { observer in
            let live = view(observer).filter { $0.value == .alive }
            return Set(live.keys) == ids
        }
    }

    func statusChanges(at observer: MemberAddress, of id: NodeID) -> [(NIODeadline, MemberStatus, MemberStatus)] {
        (events[observer] ?? []).compactMap { entry in
            if case .statusChanged(let member, let from) = entry.1, member.id == id { return (entry.0, from, member.status) }
            return nil
        }
    }

    /// A mesh of `count` fastLocal nodes on ports 1..count, joined through node 1 and converged.
    static func converged(_ count: Int, settings: MembershipSettings = .fastLocal) -> (Mesh, [MemberAddress]) {
        var mesh = Mesh()
        let addresses = (1...count).map { mesh.add(UInt16($0), settings: settings) }
        mesh.joinAll(addresses, seed: addresses[0])
        mesh.run(for: .seconds(3))
        return (mesh, addresses)
    }
}

/// Decodes a datagram in a test (the codec is internal).
func decoded(_ bytes: [UInt8]) -> [DatagramMessage] {
    Wire.decodeDatagram(bytes)?.messages ?? []
}
