import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

@Suite("Core: request / reply")
struct CoreRequestTests {
    @Test("the spec's example: request to echo, member's reply back to the caller")
    func specExample() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        let out = d.send(.request(id: 0, cluster: "echo", body: buffer("hello"), timeoutMillis: 1000), from: client)
        #expect(out.effects == [.send(member, .request(id: 0, body: buffer("hello"), timeoutMillis: 1000))])
        let back = d.send(.reply(id: 0, outcome: .success(buffer("hello"))), from: member)
        #expect(back.effects == [.send(client, .reply(id: 0, outcome: .success(buffer("hello"))))])
        #expect(d.core.pendingRequestCount == 0)
        // Nothing more at the deadline: exactly one answer.
        #expect(d.advance(.seconds(2)).isEmpty)
    }

    @Test("faults and empty bodies are relayed as they are", arguments: [
        ReplyOutcome.fault("boom"), .fault(""), .success(ByteBuffer()), .success(buffer("x")),
    ])
    func outcomes(_ outcome: ReplyOutcome) {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        _ = d.send(.request(id: 1, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        let expected: RequestOutcome =
            switch outcome {
            case .success(let body): .success(body)
            case .fault(let fault): .fault(fault)
            }
        #expect(d.send(.reply(id: 0, outcome: outcome), from: member).effects == [.send(client, .reply(id: 1, outcome: expected))])
    }

    @Test("a request goes to exactly one member, with the relay's own per-connection ids")
    func exactlyOneMember() {
        var d = CoreDriver()
        let members = (0..<3).map { _ in d.connect(cluster: "echo") }
        let client = d.connect()
        for id in UInt64(0)..<30 {
            let out = d.send(.request(id: 100 + id, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
            let targets = out.sent.map(\.0)
            #expect(targets.count == 1)
            #expect(members.contains(targets[0]))
        }
        // 30 unanswered requests over 3 members: 10 each, ids 0...9 on every member.
        #expect(d.core.pendingRequestCount == 30)
        for member in members {
            #expect(d.core.connections[member]!.assigned.keys.sorted() == Array(0..<10))
        }
    }

    @Test("members with equal load take turns")
    func roundRobinTies() {
        var d = CoreDriver()
        let a = d.connect(cluster: "echo")
        let b = d.connect(cluster: "echo")
        let c = d.connect(cluster: "echo")
        let client = d.connect()
        var order: [ConnectionID] = []
        for id in UInt64(0)..<9 {
            let out = d.send(.request(id: id, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
            guard let (member, frame) = out.sent.first, case .request(let memberID, _, _) = frame else {
                Issue.record("request \(id) was not handed over")
                return
            }
            order.append(member)
            // Answered at once: every member is back to zero in flight.
            #expect(d.send(.reply(id: memberID, outcome: .success(ByteBuffer())), from: member).sent.count == 1)
        }
        #expect(order == [a, b, c, a, b, c, a, b, c])
    }

    @Test("the member with the least work in flight is chosen")
    func leastInFlight() {
        var d = CoreDriver()
        let a = d.connect(cluster: "echo")
        let b = d.connect(cluster: "echo")
        let client = d.connect()
        func send(_ id: UInt64) -> ConnectionID? {
            d.send(.request(id: id, cluster: "echo", body: buffer("q"), timeoutMillis: 10_000), from: client).sent.first?.0
        }
        #expect(send(0) == a)
        #expect(send(1) == b)
        #expect(send(2) == a)
        #expect(send(3) == b)
        // b answers both: b has 0 in flight, a has 2, so b gets the next two.
        _ = d.send(.reply(id: 0, outcome: .success(ByteBuffer())), from: b)
        _ = d.send(.reply(id: 1, outcome: .success(ByteBuffer())), from: b)
        #expect(send(4) == b)
        #expect(send(5) == b)
        // Now 2 and 2: taking turns again.
        #expect(Set([send(6), send(7)]) == [a, b])
    }

    @Test("a member whose output is blocked is chosen only when every member is")
    func preferWritable() {
        var d = CoreDriver()
        let a = d.connect(cluster: "echo")
        let b = d.connect(cluster: "echo")
        let client = d.connect()
        _ = d.writability(a, false)
        for id in UInt64(0)..<3 {
            #expect(d.send(.request(id: id, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client).sent.first?.0 == b)
        }
        _ = d.writability(b, false)
        #expect(d.send(.request(id: 9, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client).sent.first?.0 == a)
    }

    @Test("a timeout of 0 times out at once, without reaching a member")
    func zeroTimeout() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        let out = d.send(.request(id: 3, cluster: "echo", body: buffer("q"), timeoutMillis: 0), from: client)
        #expect(out.effects == [.send(client, .reply(id: 3, outcome: .timedOut))])
        #expect(out.frames(to: member).isEmpty)
        #expect(d.core.pendingRequestCount == 0)
    }

    @Test("the deadline answers timedOut exactly once; a late reply is dropped")
    func deadline() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        _ = d.send(.request(id: 3, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        #expect(d.advance(.milliseconds(999)).isEmpty)
        let expiry = d.advance(.milliseconds(1))
        #expect(expiry.effects == [.send(client, .reply(id: 3, outcome: .timedOut))])
        #expect(expiry.reports == [.requestTimedOut(cluster: "echo", handedToMember: true)])
        #expect(d.advance(.seconds(60)).isEmpty)
        let late = d.send(.reply(id: 0, outcome: .success(buffer("late"))), from: member)
        #expect(late.effects.isEmpty)
        #expect(late.reports == [.lateReplyDropped(member)])
    }

    @Test("an unknown reply id is dropped silently")
    func unknownReply() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        #expect(d.send(.reply(id: 77, outcome: .fault("?")), from: member).effects.isEmpty)
        #expect(d.core.connectionCount == 1)
    }

    @Test("the member receives the remaining timeout")
    func remainingTimeout() {
        var d = CoreDriver()
        let client = d.connect()
        _ = d.send(.request(id: 0, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        _ = d.advance(.milliseconds(300))
        let member = d.open()
        let join = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: member)
        #expect(join.frames(to: member) == [
            .initialize(magic: "iris-relay-magic", version: "v1.0-draft2"),
            .request(id: 0, body: buffer("q"), timeoutMillis: 700),
        ])
    }

    @Test("timeouts above maxTimeout are clamped")
    func clampedTimeout() {
        var d = CoreDriver { $0.maxTimeout = .seconds(10) }
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        let out = d.send(.request(id: 0, cluster: "echo", body: buffer("q"), timeoutMillis: .max), from: client)
        #expect(out.frames(to: member) == [.request(id: 0, body: buffer("q"), timeoutMillis: 10_000)])
        #expect(d.advance(.seconds(10)).frames(to: client) == [.reply(id: 0, outcome: .timedOut)])
    }

    @Test("with no member, a request waits and is handed over when one joins")
    func waitsForMember() {
        var d = CoreDriver()
        let client = d.connect()
        let out = d.send(.request(id: 5, cluster: "echo", body: buffer("hello"), timeoutMillis: 1000), from: client)
        #expect(out.effects.isEmpty)
        #expect(d.advance(.milliseconds(400)).isEmpty)
        let member = d.connect(cluster: "echo")
        #expect(d.core.connections[member]!.assigned.count == 1)
        let back = d.send(.reply(id: 0, outcome: .success(buffer("hi"))), from: member)
        #expect(back.effects == [.send(client, .reply(id: 5, outcome: .success(buffer("hi"))))])
        #expect(d.advance(.seconds(1)).isEmpty)
    }

    @Test("with no member until the deadline, the caller gets timedOut and a later member nothing")
    func noMemberUntilDeadline() {
        var d = CoreDriver()
        let client = d.connect()
        _ = d.send(.request(id: 5, cluster: "echo", body: buffer("hello"), timeoutMillis: 1000), from: client)
        let expiry = d.advance(.seconds(1))
        #expect(expiry.effects == [.send(client, .reply(id: 5, outcome: .timedOut))])
        #expect(expiry.reports == [.requestTimedOut(cluster: "echo", handedToMember: false)])
        let member = d.open()
        let join = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: member)
        #expect(join.frames(to: member) == [.initialize(magic: "iris-relay-magic", version: "v1.0-draft2")])
    }

    @Test("waiting requests are handed over in order, spread over the members that join")
    func waitingOrder() {
        var d = CoreDriver()
        let client = d.connect()
        for id in UInt64(0)..<4 {
            _ = d.send(.request(id: id, cluster: "echo", body: buffer("q\(id)"), timeoutMillis: 1000), from: client)
        }
        let member = d.open()
        let join = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: member)
        #expect(join.frames(to: member).dropFirst().map { frame -> ByteBuffer? in
            if case .request(_, let body, _) = frame { body } else { nil }
        } == [buffer("q0"), buffer("q1"), buffer("q2"), buffer("q3")])
    }

    @Test("a member leaving mid-request: the caller gets timedOut at the deadline, once, and no other member gets it")
    func memberLeaves() {
        var d = CoreDriver()
        let a = d.connect(cluster: "echo")
        let b = d.connect(cluster: "echo")
        let client = d.connect()
        let out = d.send(.request(id: 8, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        #expect(out.sent.map(\.0) == [a])
        let gone = d.lose(a)
        #expect(gone.effects.isEmpty, "at most once: the request is not re-sent to b")
        #expect(d.advance(.milliseconds(999)).isEmpty)
        let expiry = d.advance(.milliseconds(1))
        #expect(expiry.effects == [.send(client, .reply(id: 8, outcome: .timedOut))])
        #expect(d.advance(.seconds(5)).isEmpty)
        _ = b
    }

    @Test("a member closing gracefully mid-request: same, the caller times out once")
    func memberClosesGracefully() {
        var d = CoreDriver()
        let a = d.connect(cluster: "echo")
        let client = d.connect()
        _ = d.send(.request(id: 8, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        _ = d.send(.close, from: a)
        // Its reply after CLOSE is ignored.
        #expect(d.send(.reply(id: 0, outcome: .success(buffer("x"))), from: a).isEmpty)
        #expect(d.advance(.seconds(1)).frames(to: client) == [.reply(id: 8, outcome: .timedOut)])
    }

    @Test("a caller leaving: the member's reply is dropped, and nothing fires at the deadline")
    func callerLeaves() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        _ = d.send(.request(id: 8, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        _ = d.lose(client)
        #expect(d.core.pendingRequestCount == 0)
        let reply = d.send(.reply(id: 0, outcome: .success(buffer("x"))), from: member)
        #expect(reply.effects.isEmpty)
        #expect(reply.reports == [.lateReplyDropped(member)])
        #expect(d.advance(.seconds(2)).isEmpty)
    }

    @Test("a member may send requests to its own cluster and answer itself")
    func selfRequest() {
        var d = CoreDriver()
        let m = d.connect(cluster: "echo")
        #expect(d.send(.request(id: 4, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: m).effects
            == [.send(m, .request(id: 0, body: buffer("q"), timeoutMillis: 1000))])
        #expect(d.send(.reply(id: 0, outcome: .fault("no")), from: m).effects == [.send(m, .reply(id: 4, outcome: .fault("no")))])
    }

    @Test("reaching maxPendingRequests pauses reading; an answer resumes it")
    func maxPending() {
        var d = CoreDriver { $0.maxPendingRequests = 2 }
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        #expect(!d.send(.request(id: 0, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client).contains(.pauseReading(client)))
        let second = d.send(.request(id: 1, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        #expect(second.effects.last == .pauseReading(client))
        let answer = d.send(.reply(id: 0, outcome: .success(ByteBuffer())), from: member)
        #expect(answer.effects == [.send(client, .reply(id: 0, outcome: .success(ByteBuffer()))), .resumeReading(client)])
        // A timeout frees a slot just the same.
        #expect(d.send(.request(id: 2, cluster: "echo", body: buffer("q"), timeoutMillis: 500), from: client).contains(.pauseReading(client)))
        let expiry = d.advance(.milliseconds(500))
        #expect(expiry.effects == [.send(client, .reply(id: 2, outcome: .timedOut)), .resumeReading(client)])
    }
}
