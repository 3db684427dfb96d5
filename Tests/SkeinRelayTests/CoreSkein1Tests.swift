import NIOCore
import SkeinMembership
import SkeinRouting
import SkeinWire
import Testing

@testable import SkeinRelay

/// The relay core's `skein/1` behaviour (Docs/skein-1.md "When the relay answers
/// differently"), driven directly with a fake clock.
@Suite("Relay core: skein/1's early, distinct failures")
struct CoreSkein1Tests {
    static let hello = ByteBuffer(string: "hello")

    @Test("no member anywhere: REQUEST FAILED no members at once; a v1.0-draft2 caller waits")
    func noMembers() {
        var d = CoreDriver()
        let skein = d.connect(dialect: .skein1)
        let iris = d.connect()
        let failed = d.send(.request(id: 3, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: skein)
        #expect(failed.frames(to: skein) == [.requestFailed(id: 3, reason: .noMembers, detail: "echo")])
        #expect(d.send(.request(id: 3, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: iris).frames(to: iris).isEmpty)
        #expect(d.core.pendingRequestCount == 1, "only the v1.0-draft2 request waits")
        #expect(d.advance(.milliseconds(5000)).frames(to: iris) == [.reply(id: 3, outcome: .timedOut)])
    }

    @Test("a tunnel to no member: TUNNEL FAILED no members at once")
    func tunnelNoMembers() {
        var d = CoreDriver()
        let skein = d.connect(dialect: .skein1)
        let actions = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 5000), from: skein)
        #expect(actions.frames(to: skein) == [.tunnelFailed(tunnelID: 7, reason: .noMembers, detail: "echo")])
        // The id is free again.
        _ = d.connect(cluster: "echo")
        let retry = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 5000), from: skein)
        #expect(!retry.contains { if case .disconnect = $0 { true } else { false } })
    }

    @Test("the member holding a request disconnects: member lost at once, never re-sent")
    func memberLost() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let skein = d.connect(dialect: .skein1)
        #expect(d.send(.request(id: 1, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: skein).frames(to: member).count == 1)
        let other = d.connect(cluster: "echo")
        let lost = d.lose(member)
        #expect(lost.frames(to: skein) == [.requestFailed(id: 1, reason: .memberLost, detail: "the member holding the request was lost")])
        #expect(lost.frames(to: other).isEmpty)
        #expect(d.advance(.milliseconds(5000)).frames(to: skein).isEmpty, "exactly one answer")
    }

    @Test("a member that leaves before confirming a tunnel: TUNNEL FAILED member lost")
    func buildMemberLost() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let skein = d.connect(dialect: .skein1)
        _ = d.send(.tunnelInit(tunnelID: 2, cluster: "echo", timeoutMillis: 5000), from: skein)
        let lost = d.lose(member)
        #expect(lost.frames(to: skein) == [.tunnelFailed(tunnelID: 2, reason: .memberLost, detail: "the member left before confirming")])
    }

    @Test("the relay a request went to is lost: member lost now; one that left: its answer is awaited")
    func relayLost() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["echo": 1])
        let skein = d.connect(dialect: .skein1)
        let sent = d.send(.request(id: 4, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: skein)
        guard case .request(let key, _, _, _, _)? = sent.peerFrames(to: b).first else { Issue.record("not forwarded"); return }
        // Left: it drains, so its reply still counts.
        #expect(d.removeRelay(b, .left).frames(to: skein).isEmpty)
        let answer = d.peer(.reply(id: key, outcome: .success(ByteBuffer(string: "drained"))), from: b)
        #expect(answer.frames(to: skein) == [.reply(id: 4, outcome: .success(ByteBuffer(string: "drained")))])
        // Broken: member lost at once.
        let (c, _) = d.relay(2, clusters: ["echo": 1])
        _ = d.send(.request(id: 5, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: skein)
        let broken = d.removeRelay(c, .linkBroken)
        #expect(broken.frames(to: skein) == [.requestFailed(id: 5, reason: .memberLost, detail: "the member holding the request was lost")])
        #expect(d.core.requestsInFlight(to: c) == 0)
    }

    @Test("a relay known to serve the cluster but briefly unusable: the request waits, and goes when it is back")
    func suspendedRelayIsNotNoMembers() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["echo": 1])
        _ = d.removeRelay(b, .suspect)
        let skein = d.connect(dialect: .skein1)
        #expect(d.send(.request(id: 6, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: skein).frames(to: skein).isEmpty)
        let (_, back) = d.relay(1, clusters: ["echo": 1])
        #expect(back.peerFrames(to: b).count == 1, "sent once the relay is usable again")
        // A relay that is gone for good does not count.
        let (c, _) = d.relay(2, clusters: ["lonely": 1])
        _ = d.removeRelay(c, .dead)
        let none = d.send(.request(id: 7, cluster: "lonely", body: Self.hello, timeoutMillis: 5000), from: skein)
        #expect(none.frames(to: skein) == [.requestFailed(id: 7, reason: .noMembers, detail: "lonely")])
    }

    @Test("every relay that served the cluster says it has none: no members at once")
    func allDeclined() {
        var d = CoreDriver()
        let (b, _) = d.relay(1, clusters: ["echo": 1])
        let skein = d.connect(dialect: .skein1)
        let sent = d.send(.request(id: 8, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: skein)
        guard case .request(let key, _, _, _, _)? = sent.peerFrames(to: b).first else { Issue.record("not forwarded"); return }
        let declined = d.peer(.reply(id: key, outcome: .noMembers), from: b)
        #expect(declined.frames(to: skein) == [.requestFailed(id: 8, reason: .noMembers, detail: "echo")])
    }

    @Test("relay shutdown: callers hear the shutdown's reason, not member lost")
    func shutdown() {
        var d = CoreDriver()
        _ = d.connect(cluster: "echo")
        let skein = d.connect(dialect: .skein1)
        _ = d.send(.request(id: 1, cluster: "echo", body: Self.hello, timeoutMillis: 5000), from: skein)
        var actions: [RelayAction] = []
        d.core.closeAll(reason: "relay shutting down", actions: &actions)
        #expect(actions.frames(to: skein) == [.close(reason: "relay shutting down")])
    }
}
