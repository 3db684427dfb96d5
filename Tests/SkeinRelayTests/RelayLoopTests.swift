import NIOCore
import SkeinMembership
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

/// Two relay loops joined in this process by a perfect, instant network on virtual time: the
/// rules `RelayLoop` adds between the relay core and membership, each seen from its inputs and
/// actions. (Many loops with faults and clients: SkeinSimulatorTests, "Whole mesh".)
struct LoopPair {
    var loops: [RelayLoop]
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
    let addresses = [MemberAddress(host: "10.0.0.1", port: 7946), MemberAddress(host: "10.0.0.2", port: 7946)]
    let ids = [testNode(1, group: 1), testNode(2, group: 2)]
    /// Every action each loop produced, in order.
    var log: [[RelayAction]] = [[], []]
    /// Whether frames between the two arrive (false: a partition).
    var connected = true

    init() {
        var loops: [RelayLoop] = []
        for i in 0..<2 {
            var mesh = RelayLoopMesh(id: ids[i], name: "r\(i)", address: addresses[i], membership: .fastLocal)
            mesh.readmitDelay = .seconds(1)
            loops.append(try! RelayLoop(
                core: RelayCore(settings: RelaySettings(), seed: UInt64(i)), mesh: mesh, seed: UInt64(10 + i),
                now: NIODeadline.uptimeNanoseconds(1_000_000_000_000), generation: 1))
        }
        self.loops = loops
    }

    /// Feeds one input to loop `i` and carries out the mesh actions it causes, both ways, at once.
    @discardableResult
    mutating func handle(_ input: RelayInput, at i: Int) -> [RelayAction] {
        var actions: [RelayAction] = []
        loops[i].handle(input, now: now, actions: &actions)
        log[i].append(contentsOf: actions)
        let other = 1 - i
        for action in actions where connected {
            switch action {
            case .sendDatagram(let bytes, let to) where to == addresses[other]:
                handle(.datagram(bytes, from: addresses[i]), at: other)
            case .sendPeerAt(let to, .membership(let bytes)) where to == addresses[other]:
                handle(.membershipStream(Array(bytes.readableBytesView), from: addresses[i]), at: other)
            default:
                break
            }
        }
        return actions
    }

    /// Advances virtual time by `duration`, firing both loops' timers as they come due.
    mutating func run(for duration: TimeAmount) {
        let end = now + duration
        while true {
            let next = [0, 1].compactMap { i in loops[i].nextDeadline.map { ($0, i) } }.min { $0.0 < $1.0 }
            guard let (at, i) = next, at <= end else { break }
            now = max(now, at)
            handle(.timer, at: i)
        }
        now = end
    }

    /// Opens client connection 1 on loop `i`, as a member of `cluster` ("" for none).
    mutating func client(cluster: String, at i: Int) {
        handle(.clientOpened(ConnectionID(1)), at: i)
        handle(.clientFrame(ConnectionID(1), .initialize(magic: RelayProtocol.clientMagic, version: RelayProtocol.irisVersion, cluster: cluster)), at: i)
    }

    mutating func joined() {
        handle(.join([]), at: 0)
        handle(.join([addresses[0]]), at: 1)
        run(for: .seconds(2))
    }
}

@Suite("Relay loop: the rules between the relay core and membership")
struct RelayLoopTests {
    @Test("two loops join, and each routes to the other once its metadata says what it serves")
    func joinAndAdvertise() {
        var pair = LoopPair()
        pair.joined()
        #expect(pair.loops[0].membership?.member(pair.ids[1])?.status == .alive)
        // A member joins cluster svc on relay 1: advertised within the metadata delay, not at once.
        pair.client(cluster: "svc", at: 1)
        #expect(pair.loops[1].nextDeadline! <= pair.now + .milliseconds(50))
        #expect(pair.loops[0].core.remoteRelays[pair.ids[1]]?.clusters["svc"] == nil)
        pair.run(for: .milliseconds(500))
        #expect(pair.loops[0].core.remoteRelays[pair.ids[1]]?.clusters["svc"] == 1)
    }

    @Test("a burst of subscriptions is one metadata update")
    func metadataIsCoalesced() {
        var pair = LoopPair()
        pair.joined()
        let before = pair.loops[1].membership!.member(pair.ids[1])!.metadataVersion
        pair.client(cluster: "", at: 1)
        for topic in 0..<20 { pair.handle(.clientFrame(ConnectionID(1), .subscribe(topic: "t\(topic)")), at: 1) }
        pair.run(for: .milliseconds(200))
        #expect(pair.loops[1].membership!.member(pair.ids[1])!.metadataVersion == before + 1)
        #expect(pair.loops[0].core.remoteRelays[pair.ids[1]]?.topics.count == 20)
    }

    @Test("a frame for a relay without a link goes to its address; for an unknown one, nowhere")
    func unsentFrames() {
        var pair = LoopPair()
        pair.joined()
        let frame = PeerFrame.publish(topic: "t", body: ByteBuffer(string: "x"))
        let known = pair.handle(.peerUnsent(pair.ids[1], frame), at: 0)
        #expect(known == [.sendPeerAt(pair.addresses[1], frame)])
        let unknown = pair.handle(.peerUnsent(testNode(9, group: 9), frame), at: 0)
        #expect(!unknown.contains { if case .sendPeerAt = $0 { true } else { false } })
    }

    @Test("a broken link takes the relay out of routing for the readmit delay, and membership probes it")
    func brokenLinkReadmits() {
        var pair = LoopPair()
        pair.joined()
        pair.client(cluster: "svc", at: 1)
        pair.run(for: .milliseconds(500))
        #expect(pair.loops[0].core.remoteRelays[pair.ids[1]] != nil)
        let probesBefore = pair.loops[0].membership!.stats.probesSent
        pair.handle(.peerLinkDown(.broken(pair.ids[1])), at: 0)
        #expect(pair.loops[0].core.remoteRelays[pair.ids[1]] == nil)
        #expect(pair.loops[0].membership!.stats.probesSent == probesBefore + 1)
        pair.run(for: .milliseconds(900))
        #expect(pair.loops[0].core.remoteRelays[pair.ids[1]] == nil)
        pair.run(for: .milliseconds(200))
        #expect(pair.loops[0].core.remoteRelays[pair.ids[1]]?.clusters["svc"] == 1)
    }

    @Test("a graceful end of a link changes nothing; a refused dial is evidence against the relay")
    func linkEnds() {
        var pair = LoopPair()
        pair.joined()
        #expect(pair.handle(.peerLinkDown(.graceful), at: 0).isEmpty)
        pair.connected = false
        pair.handle(.peerLinkDown(.dialFailed(pair.addresses[1], refused: true)), at: 0)
        pair.run(for: .seconds(3))
        #expect(pair.loops[0].membership!.member(pair.ids[1])!.status == .dead)
    }

    @Test("a relay back from the dead has its links reset before anything is routed to it")
    func backFromDeadResetsLinks() {
        var pair = LoopPair()
        pair.joined()
        pair.connected = false
        pair.run(for: .seconds(5))
        #expect(pair.loops[0].membership!.member(pair.ids[1])!.status == .dead)
        pair.connected = true
        pair.log = [[], []]
        pair.run(for: .seconds(5))
        #expect(pair.loops[0].membership!.member(pair.ids[1])!.status == .alive)
        let reset = pair.log[0].firstIndex { if case .resetPeerLinks(let node, _) = $0 { node == pair.ids[1] } else { false } }
        let alive = pair.log[0].firstIndex {
            if case .report(.membership(.statusChanged(let member, from: .dead))) = $0 { member.id == pair.ids[1] } else { false }
        }
        #expect(reset != nil && alive != nil && reset! == alive! + 1)
    }

    @Test("after leaving, membership takes no more input and no metadata goes out")
    func leave() {
        var pair = LoopPair()
        pair.joined()
        pair.handle(.leave, at: 1)
        #expect(pair.loops[1].hasLeft)
        #expect(pair.loops[0].membership!.member(pair.ids[1])!.status == .left)
        pair.client(cluster: "svc", at: 1)
        #expect(pair.loops[1].nextDeadline == pair.loops[1].core.nextDeadline)
    }

    @Test("the drain ends when the last request in flight is answered, or at its deadline; closing ends with the last connection")
    func shutdown() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let (caller, member) = (ConnectionID(1), ConnectionID(2))
        func start() -> (RelayLoop, UInt64) {
            var loop = RelayLoop(core: RelayCore(settings: RelaySettings()))
            var actions: [RelayAction] = []
            for (id, cluster) in [(caller, ""), (member, "svc")] {
                loop.handle(.clientOpened(id), now: t0, actions: &actions)
                loop.handle(.clientFrame(id, .initialize(magic: RelayProtocol.clientMagic, version: RelayProtocol.irisVersion, cluster: cluster)), now: t0, actions: &actions)
            }
            loop.handle(.clientFrame(caller, .request(id: 1, cluster: "svc", body: ByteBuffer(string: "x"), timeoutMillis: 60_000)), now: t0, actions: &actions)
            let handed = actions.compactMap { if case .send(member, .request(let id, _, _)) = $0 { id } else { nil } }
            #expect(handed.count == 1)
            return (loop, handed.first ?? 0)
        }
        func reported(_ actions: [RelayAction]) -> [String] {
            actions.compactMap {
                switch $0 {
                case .report(.drained(let unanswered)): "drained \(unanswered)"
                case .report(.allClosed): "all closed"
                default: nil
                }
            }
        }
        // The member answers: the drain is over at that input.
        var (loop, handed) = start()
        var actions: [RelayAction] = []
        loop.handle(.drain(until: t0 + .seconds(5)), now: t0, actions: &actions)
        #expect(reported(actions).isEmpty && loop.nextDeadline == t0 + .seconds(5))
        loop.handle(.clientFrame(member, .reply(id: handed, outcome: .success(ByteBuffer(string: "y")))), now: t0 + .milliseconds(3), actions: &actions)
        #expect(reported(actions) == ["drained 0"])
        // Closing: reported when the last connection is gone, once.
        actions = []
        loop.handle(.closeAll(reason: "bye"), now: t0, actions: &actions)
        loop.handle(.clientClosed(caller, unparsedBytes: 0), now: t0, actions: &actions)
        #expect(reported(actions).isEmpty)
        loop.handle(.clientClosed(member, unparsedBytes: 0), now: t0, actions: &actions)
        loop.handle(.timer, now: t0 + .seconds(9), actions: &actions)
        #expect(reported(actions) == ["all closed"])

        // Nobody answers: the timer at the deadline ends the drain, with one request left.
        (loop, _) = start()
        actions = []
        loop.handle(.drain(until: t0 + .seconds(5)), now: t0, actions: &actions)
        loop.handle(.timer, now: t0 + .seconds(5), actions: &actions)
        #expect(reported(actions) == ["drained 1"])
        // Asked again once drained: answered at once, never left waiting.
        actions = []
        loop.handle(.drain(until: t0 + .seconds(9)), now: t0 + .seconds(6), actions: &actions)
        #expect(reported(actions) == ["drained 1"])
    }
}
