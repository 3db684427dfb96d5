import NIOCore
import SkeinMembership
import SkeinRouting
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

extension CoreDriver {
    mutating func relay(_ n: UInt64, clusters: [String: UInt32] = [:], topics: Set<String> = [], zone: String = "") -> (NodeID, [RelayAction]) {
        let id = testNode(n, group: 7)
        var actions: [RelayAction] = []
        core.relayUpdated(RemoteRelay(id: id, name: "r\(n)", zone: zone, clusters: clusters, topics: topics, load: 0), now: now, actions: &actions)
        return (id, actions)
    }

    mutating func peer(_ frame: PeerFrame, from relay: NodeID) -> [RelayAction] {
        var actions: [RelayAction] = []
        core.receivedPeer(frame, from: relay, now: now, actions: &actions)
        return actions
    }

    mutating func removeRelay(_ relay: NodeID, _ loss: RelayLoss = .dead) -> [RelayAction] {
        var actions: [RelayAction] = []
        core.relayUnavailable(relay, loss, now: now, actions: &actions)
        return actions
    }
}

extension Array where Element == RelayAction {
    func peerFrames(to relay: NodeID) -> [PeerFrame] {
        compactMap { action in
            if case .sendPeer(relay, let frame) = action { frame } else { nil }
        }
    }

    var peerFrames: [(NodeID, PeerFrame)] {
        compactMap { action in
            if case .sendPeer(let relay, let frame) = action { (relay, frame) } else { nil }
        }
    }
}

@Suite("Relay core: other relays as destinations")
struct CoreMeshTests {
    static let hello = ByteBuffer(string: "hello")

    @Test("a request for a cluster served only by another relay is forwarded with the time left")
    func forwardsRequest() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["echo": 1])
        let client = d.connect()
        let actions = d.send(.request(id: 5, cluster: "echo", body: Self.hello, timeoutMillis: 1500), from: client)
        guard case .request(let key, "echo", 1500, _, Self.hello)? = actions.peerFrames(to: b).first else {
            Issue.record("expected a forwarded request, got \(actions)")
            return
        }
        #expect(d.core.requestsInFlight(to: b) == 1)
        let answer = d.peer(.reply(id: key, outcome: .success(ByteBuffer(string: "world"))), from: b)
        #expect(answer.frames(to: client) == [.reply(id: 5, outcome: .success(ByteBuffer(string: "world")))])
        #expect(d.core.requestsInFlight(to: b) == 0)
        // A second answer for the same request is dropped: exactly one answer.
        #expect(d.peer(.reply(id: key, outcome: .fault("again")), from: b).isEmpty)
    }

    @Test("local members are preferred while the cluster has one here")
    func prefersLocal() {
        var d = CoreDriver()
        _ = d.relay(1, clusters: ["echo": 3])
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        let actions = d.send(.request(id: 1, cluster: "echo", body: Self.hello, timeoutMillis: 1000), from: client)
        #expect(actions.peerFrames.isEmpty)
        #expect(actions.frames(to: member).count == 1)
    }

    @Test("'no members' sends the request to another relay; with none left it waits, then goes when one appears")
    func noMembersReroutes() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["echo": 1])
        let client = d.connect()
        let first = d.send(.request(id: 1, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: client)
        guard case .request(let key, _, _, _, _)? = first.peerFrames(to: b).first else { Issue.record("not forwarded"); return }
        let (c, _) = d.relay(2, clusters: ["echo": 1])
        let rerouted = d.peer(.reply(id: key, outcome: .noMembers), from: b)
        #expect(rerouted.peerFrames(to: c).count == 1, "\(rerouted)")
        // C has none either, and B declined already (no bouncing between them): it waits here.
        let waiting = d.peer(.reply(id: key, outcome: .noMembers), from: c)
        #expect(waiting.peerFrames.isEmpty)
        #expect(d.core.pendingRequestCount == 1)
        let member = d.open()
        let joined = d.send(.initialize(magic: RelayProtocol.clientMagic, version: RelayProtocol.irisVersion, cluster: "echo"), from: member)
        #expect(joined.frames(to: member).contains { if case .request = $0 { true } else { false } })
    }

    @Test("a request that may have reached a member is never sent again: its caller times out at the deadline")
    func lostRelayMeansTimeout() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["echo": 1])
        let (c, _) = d.relay(2, clusters: ["echo": 1])
        let client = d.connect()
        let sent = d.send(.request(id: 9, cluster: "echo", body: Self.hello, timeoutMillis: 2000), from: client)
        guard let (target, _) = sent.peerFrames.first else { Issue.record("not forwarded"); return }
        let other = target == b ? c : b
        let lost = d.removeRelay(target)
        #expect(lost.peerFrames.isEmpty && lost.frames(to: client).isEmpty)
        // A later failed dial to the same relay does not make it safe to resend.
        _ = d.relay(target == b ? 1 : 2, clusters: ["echo": 1])
        #expect(d.removeRelay(target, .neverReached).peerFrames(to: other).isEmpty)
        #expect(d.advance(.milliseconds(1999)).frames(to: client).isEmpty)
        #expect(d.advance(.milliseconds(1)).frames(to: client) == [.reply(id: 9, outcome: .timedOut)])
    }

    @Test("a request whose link was never established goes to another relay at once")
    func neverSentReroutes() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["echo": 1])
        let client = d.connect()
        _ = d.send(.request(id: 9, cluster: "echo", body: Self.hello, timeoutMillis: 2000), from: client)
        let (c, _) = d.relay(2, clusters: ["echo": 1])
        let actions = d.removeRelay(b, .neverReached)
        #expect(actions.peerFrames(to: c).count == 1)
        // It is with c now, and no longer counted against b (routing picks the least loaded).
        #expect(d.core.requestsInFlight(to: b) == 0 && d.core.requestsInFlight(to: c) == 1)
    }

    @Test("a request from another relay goes to a member here, and its answer goes back; with no member, 'no members' at once")
    func servesRemoteRequests() {
        var d = CoreDriver()
        let a = testNode(99, group: 7)
        #expect(d.peer(.request(id: 3, cluster: "echo", remainingMillis: 1000, flags: [], body: Self.hello), from: a).peerFrames(to: a)
            == [.reply(id: 3, outcome: .noMembers)])
        let member = d.connect(cluster: "echo")
        let handed = d.peer(.request(id: 4, cluster: "echo", remainingMillis: 1000, flags: [], body: Self.hello), from: a)
        guard case .request(let memberID, Self.hello, 1000)? = handed.frames(to: member).first else { Issue.record("\(handed)"); return }
        let reply = d.send(.reply(id: memberID, outcome: .success(ByteBuffer(string: "hi"))), from: member)
        #expect(reply.peerFrames(to: a) == [.reply(id: 4, outcome: .success(ByteBuffer(string: "hi")))])
        // A member that leaves holding a request: the origin hears "member lost" at once.
        let again = d.peer(.request(id: 5, cluster: "echo", remainingMillis: 1000, flags: [], body: Self.hello), from: a)
        #expect(again.frames(to: member).count == 1)
        #expect(d.lose(member).peerFrames(to: a) == [.reply(id: 5, outcome: .memberLost)])
    }

    @Test("a suspect relay, or one whose link broke, still gets events and broadcasts, but no requests (issue 17)")
    func fanOutToSuspects() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["all": 1], topics: ["news"])
        let sender = d.connect()
        for loss in [RelayLoss.suspect, .linkBroken] {
            _ = d.removeRelay(b, loss)
            let publish = d.send(.publish(topic: "news", event: Self.hello), from: sender)
            #expect(publish.peerFrames(to: b) == [.publish(topic: "news", body: Self.hello)], "\(loss)")
            let broadcast = d.send(.broadcast(cluster: "all", message: Self.hello), from: sender)
            #expect(broadcast.peerFrames(to: b) == [.broadcast(cluster: "all", body: Self.hello)], "\(loss)")
            _ = d.relay(1, clusters: ["all": 1], topics: ["news"])
        }
        // Suspect, then dead: the publish route (cached per routing version) drops it.
        _ = d.removeRelay(b, .suspect)
        #expect(d.send(.publish(topic: "news", event: Self.hello), from: sender).peerFrames(to: b).count == 1)
        _ = d.removeRelay(b, .dead)
        #expect(d.send(.publish(topic: "news", event: Self.hello), from: sender).peerFrames(to: b).isEmpty)
    }

    @Test("broadcast and publish go once to each relay that serves them, and frames from relays reach local ones only")
    func fanOut() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["all": 5], topics: ["news"])
        let (c, _) = d.relay(2, clusters: ["all": 1])
        let local = d.connect(cluster: "all")
        let subscriber = d.connect()
        _ = d.send(.subscribe(topic: "news"), from: subscriber)
        let sender = d.connect()
        let broadcast = d.send(.broadcast(cluster: "all", message: Self.hello), from: sender)
        #expect(broadcast.peerFrames.count == 2)
        #expect(Set(broadcast.peerFrames.map(\.0)) == [b, c])
        #expect(broadcast.frames(to: local) == [.broadcast(message: Self.hello)])
        let publish = d.send(.publish(topic: "news", event: Self.hello), from: sender)
        #expect(publish.peerFrames(to: b) == [.publish(topic: "news", body: Self.hello)])
        #expect(publish.peerFrames(to: c).isEmpty)
        let fromB = d.peer(.publish(topic: "news", body: Self.hello), from: b)
        #expect(fromB.peerFrames.isEmpty)
        #expect(fromB.frames(to: subscriber) == [.publish(topic: "news", event: Self.hello)])
    }

    @Test("events from another relay for a blocked subscriber: queued up to slowConsumerBytes, then it is closed as a slow consumer")
    func slowConsumerOfRemoteEvents() {
        var d = CoreDriver { $0.slowConsumerBytes = 3000; $0.slowConsumerTimeout = .seconds(10) }
        let (b, _) = d.relay(1)
        let slow = d.connect()
        let fine = d.connect()
        let member = d.connect(cluster: "all")
        _ = d.send(.subscribe(topic: "news"), from: slow)
        _ = d.send(.subscribe(topic: "news"), from: fine)
        let event = ByteBuffer(repeating: 1, count: 1000)
        // Unblocked, nothing is counted.
        for _ in 0..<10 { #expect(d.peer(.publish(topic: "news", body: event), from: b).frames(to: slow).count == 1) }
        _ = d.writability(slow, false)
        for _ in 0..<3 {
            let out = d.peer(.publish(topic: "news", body: event), from: b)
            #expect(out.frames(to: slow) == [.publish(topic: "news", event: event)])
            #expect(out.reports.isEmpty)
        }
        // Draining resets the count.
        _ = d.writability(slow, true)
        _ = d.writability(slow, false)
        for _ in 0..<3 { #expect(d.peer(.publish(topic: "news", body: event), from: b).reports.isEmpty) }
        // The 3001st byte: closed, with the reason, reported; the other subscriber is untouched.
        let over = d.peer(.publish(topic: "news", body: event), from: b)
        #expect(over.frames(to: fine) == [.publish(topic: "news", event: event)])
        #expect(over.reports == [.slowConsumer(slow, reason: "slow consumer: more than 3000 bytes from other relays queued while its output was blocked")])
        #expect(over.closeReason(of: slow) == "slow consumer: more than 3000 bytes from other relays queued while its output was blocked")
        #expect(d.core.topicSubscriptions == ["news": 1])
        #expect(d.peer(.publish(topic: "news", body: event), from: b).frames(to: slow).isEmpty)
        // Broadcasts from another relay count the same way, for members.
        _ = d.writability(member, false)
        for _ in 0..<3 { #expect(d.peer(.broadcast(cluster: "all", body: event), from: b).reports.isEmpty) }
        #expect(d.peer(.broadcast(cluster: "all", body: event), from: b).reports == [.slowConsumer(member, reason: "slow consumer: more than 3000 bytes from other relays queued while its output was blocked")])
        // A blocked connection that goes away leaves no count behind.
        _ = d.lose(slow)
        _ = d.lose(member)
        #expect(d.core.blockedConnections == 0)
    }

    @Test("a suspect relay gets no new work but keeps its tunnels; a lost one's tunnels fail with a reason")
    func suspectVersusLost() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["files": 1])
        let client = d.connect()
        let open = d.send(.tunnelInit(tunnelID: 1, cluster: "files", timeoutMillis: 5000), from: client)
        guard case .tunnelOpen(let key, "files", _, _)? = open.peerFrames(to: b).first else { Issue.record("\(open)"); return }
        let built = d.peer(.tunnelConfirm(id: key, outcome: .built(farID: 77, chunkLimit: 65536)), from: b)
        #expect(built.frames(to: client).first == .tunnelConfirm(tunnelID: 1, outcome: .built(chunkLimit: d.core.settings.effectiveChunkLimit)))
        #expect(built.peerFrames(to: b) == [.tunnelAllowance(id: 77, bytes: d.core.settings.tunnelBuffer)])
        #expect(d.removeRelay(b, .suspect).isEmpty)
        #expect(d.core.tunnelCount == 1)
        let lost = d.removeRelay(b)
        #expect(lost.frames(to: client) == [.tunnelClose(tunnelID: 1, reason: "the relay at the other end was lost")])
        #expect(d.core.tunnelCount == 0)
    }

    @Test("tunnel data crosses relays only within the allowance the next hop granted")
    func tunnelAllowanceAcrossRelays() {
        var d = CoreDriver { $0.tunnelBuffer = 100_000 }
        let (b, _) = d.relay(1, clusters: ["files": 1])
        let client = d.connect()
        let open = d.send(.tunnelInit(tunnelID: 1, cluster: "files", timeoutMillis: 5000), from: client)
        guard case .tunnelOpen(let key, _, _, _)? = open.peerFrames(to: b).first else { return }
        _ = d.peer(.tunnelConfirm(id: key, outcome: .built(farID: 77, chunkLimit: 65536)), from: b)
        let chunk = ByteBuffer(repeating: 1, count: 60_000)
        // B has granted nothing yet: the chunk waits here.
        #expect(d.send(.tunnelTransfer(tunnelID: 1, sizeOrContinuation: 60_000, chunk: chunk), from: client).peerFrames.isEmpty)
        let granted = d.peer(.tunnelAllowance(id: key, bytes: 60_000), from: b)
        #expect(granted.peerFrames(to: b) == [.tunnelData(id: 77, sizeOrContinuation: 60_000, chunk: chunk)])
        #expect(granted.frames(to: client) == [.tunnelAllow(tunnelID: 1, bytes: 60_000)])
        // Data from B beyond what this relay granted it ends the tunnel, not the link.
        let flood = d.peer(.tunnelData(id: key, sizeOrContinuation: 200_000, chunk: ByteBuffer(repeating: 2, count: 150_000)), from: b)
        #expect(flood.frames(to: client).first == .tunnelClose(tunnelID: 1, reason: "the far relay sent more than allowed"))
    }

    @Test("a full peer link pauses the local publishers that send to that relay, until it drains")
    func backpressureAcrossRelays() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, topics: ["news"])
        let publisher = d.connect()
        let bystander = d.connect()
        var actions: [RelayAction] = []
        d.core.relayWritabilityChanged(b, writable: false, actions: &actions)
        #expect(actions.isEmpty)
        let published = d.send(.publish(topic: "news", event: Self.hello), from: publisher)
        #expect(published.peerFrames(to: b).count == 1)  // the event is not lost, but…
        #expect(published.contains(.pauseReading(publisher)))  // …its publisher waits
        #expect(!d.send(.publish(topic: "other", event: Self.hello), from: bystander).contains(.pauseReading(bystander)))
        actions = []
        d.core.relayWritabilityChanged(b, writable: true, actions: &actions)
        #expect(actions == [.resumeReading(publisher)])
        // A relay that is lost never holds anyone back.
        d.core.relayWritabilityChanged(b, writable: false, actions: &actions)
        _ = d.send(.publish(topic: "news", event: Self.hello), from: publisher)
        #expect(d.removeRelay(b).contains(.resumeReading(publisher)))
    }
}
