import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay

/// Defects found in RelayCore, each with the test that showed it.
@Suite("Core: regressions")
struct CoreRegressionTests {
    @Test("requests that time out while waiting for a member leave no queue behind")
    func expiredWaitingRequests() {
        var d = CoreDriver()
        let client = d.connect()
        // A cluster name per request, none of which ever gets a member.
        for i in UInt64(0)..<100 {
            _ = d.send(.request(id: i, cluster: "nobody-\(i)", body: buffer("q"), timeoutMillis: 10 + i), from: client)
        }
        #expect(d.core.requests.waitingClusters.count == 100)
        let expiry = d.advance(.seconds(1))
        #expect(expiry.frames(to: client).count == 100)
        #expect(d.core.requests.waitingClusters.isEmpty)
    }

    @Test("requests whose caller left while they waited leave no queue behind")
    func abandonedWaitingRequests() {
        var d = CoreDriver()
        let client = d.connect()
        _ = d.send(.request(id: 0, cluster: "nobody", body: buffer("q"), timeoutMillis: 1000), from: client)
        _ = d.lose(client)
        #expect(d.core.requests.waitingClusters.isEmpty)
    }

    @Test("a waiting request behind an expired one is still handed over, in order")
    func pruneKeepsLiveRequests() {
        var d = CoreDriver()
        let client = d.connect()
        _ = d.send(.request(id: 0, cluster: "echo", body: buffer("short"), timeoutMillis: 10), from: client)
        _ = d.send(.request(id: 1, cluster: "echo", body: buffer("long"), timeoutMillis: 1000), from: client)
        _ = d.send(.request(id: 2, cluster: "echo", body: buffer("short too"), timeoutMillis: 20), from: client)
        #expect(d.advance(.milliseconds(20)).frames(to: client) == [.reply(id: 0, outcome: .timedOut), .reply(id: 2, outcome: .timedOut)])
        let member = d.connect(cluster: "echo")
        _ = member
        #expect(d.core.connections[member]!.assigned.count == 1)
        #expect(d.core.requests.waitingClusters.isEmpty)
    }

    @Test("tunnel builds that time out or are abandoned while waiting leave no queue behind")
    func waitingBuilds() {
        var d = CoreDriver()
        let initiator = d.connect()
        _ = d.send(.tunnelInit(tunnelID: 1, cluster: "a", timeoutMillis: 10), from: initiator)
        _ = d.send(.tunnelInit(tunnelID: 2, cluster: "b", timeoutMillis: 1000), from: initiator)
        _ = d.send(.tunnelInit(tunnelID: 3, cluster: "c", timeoutMillis: 1000), from: initiator)
        #expect(d.advance(.milliseconds(10)).frames(to: initiator) == [.tunnelConfirm(tunnelID: 1, outcome: .timedOut)])
        #expect(d.send(.tunnelClose(tunnelID: 2), from: initiator).frames(to: initiator) == [.tunnelClose(tunnelID: 2, reason: "")])
        #expect(d.core.waitingBuilds.clusters.sorted() == ["c"])
        _ = d.lose(initiator)
        #expect(d.core.waitingBuilds.clusters.isEmpty)
    }

    @Test("a member joining after a waiting request's deadline does not get it with 0 ms left")
    func noHandOverAfterDeadline() {
        var d = CoreDriver()
        let client = d.connect()
        _ = d.send(.request(id: 4, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        // The deadline passes; the shell's wakeup has not run yet when the member's INIT arrives.
        d.now = d.now + .milliseconds(1000)
        let member = d.open()
        let join = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: member)
        #expect(join.frames(to: member) == [.initialize(magic: "iris-relay-magic", version: "v1.0-draft2")])
        #expect(d.advance(.zero).effects == [.send(client, .reply(id: 4, outcome: .timedOut))])
    }

    @Test("the remaining timeout handed to a member is rounded up, never to 0 while time is left")
    func remainingRoundsUp() {
        var d = CoreDriver()
        let client = d.connect()
        _ = d.send(.request(id: 4, cluster: "echo", body: buffer("q"), timeoutMillis: 1000), from: client)
        #expect(d.advance(.microseconds(999_500)).isEmpty)
        let member = d.open()
        let join = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: member)
        #expect(join.frames(to: member).last == .request(id: 0, body: buffer("q"), timeoutMillis: 1))
    }

    @Test("a member joining after a waiting build's deadline is not offered it")
    func noOfferAfterDeadline() {
        var d = CoreDriver()
        let initiator = d.connect()
        _ = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator)
        d.now = d.now + .milliseconds(1000)
        let member = d.open()
        let join = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: member)
        #expect(join.frames(to: member) == [.initialize(magic: "iris-relay-magic", version: "v1.0-draft2")])
        #expect(d.advance(.zero).effects == [.send(initiator, .tunnelConfirm(tunnelID: 7, outcome: .timedOut))])
    }
}

@Suite("Core: timer bookkeeping")
struct CoreTimerTests {
    @Test("answered requests do not keep their timers until the deadline; live timers survive")
    func answeredRequestTimers() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        // One request nobody answers, then many answered at once, all with a one-hour timeout.
        _ = d.send(.request(id: 999_999, cluster: "echo", body: buffer("slow"), timeoutMillis: 3_600_000), from: client)
        for i in UInt64(0)..<10_000 {
            _ = d.send(.request(id: i, cluster: "echo", body: buffer("q"), timeoutMillis: 3_600_000), from: client)
            _ = d.send(.reply(id: i + 1, outcome: .success(ByteBuffer())), from: member)
        }
        #expect(d.core.pendingRequestCount == 1)
        #expect(d.core.timers.count < 1_000, "timers of answered requests piled up: \(d.core.timers.count)")
        #expect(d.advance(.seconds(3600)).effects == [.send(client, .reply(id: 999_999, outcome: .timedOut))])
    }

    @Test("compaction keeps every kind of live timer")
    func compactionKeepsLiveTimers() {
        var d = CoreDriver { $0.handshakeTimeout = .seconds(5); $0.slowConsumerTimeout = .seconds(5) }
        let silent = d.open()
        let member = d.connect(cluster: "echo")
        let client = d.connect()
        _ = d.writability(member, false)
        _ = d.send(.tunnelInit(tunnelID: 1, cluster: "nobody", timeoutMillis: 5000), from: client)
        _ = d.send(.request(id: 7, cluster: "nobody", body: buffer("q"), timeoutMillis: 5000), from: client)
        for i in UInt64(0)..<5_000 {
            _ = d.send(.request(id: i, cluster: "echo", body: buffer("q"), timeoutMillis: 60_000), from: client)
            _ = d.send(.reply(id: i, outcome: .success(ByteBuffer())), from: member)
        }
        let fired = d.advance(.seconds(5))
        #expect(fired.disconnected.contains(silent))
        #expect(fired.closeReason(of: member) != nil)
        #expect(fired.frames(to: client).contains(.tunnelConfirm(tunnelID: 1, outcome: .timedOut)))
        #expect(fired.frames(to: client).contains(.reply(id: 7, outcome: .timedOut)))
    }

    @Test("a connection remembered as open stops being served the moment it is closed, however it closes")
    func rememberedOpenConnectionCloses() {
        var d = CoreDriver()
        let subscriber = d.connect()
        _ = d.send(.subscribe(topic: "t"), from: subscriber)
        // Closed by a violation after a flood made it the remembered connection.
        let violator = d.connect()
        #expect(d.send(.publish(topic: "t", event: buffer("1")), from: violator).frames(to: subscriber).count == 1)
        _ = d.malformed(violator, .unknownOpcode(0xff))
        #expect(d.send(.publish(topic: "t", event: buffer("2")), from: violator).isEmpty)
        // Closed by its own CLOSE.
        let closer = d.connect()
        #expect(d.send(.publish(topic: "t", event: buffer("3")), from: closer).frames(to: subscriber).count == 1)
        _ = d.send(.close, from: closer)
        #expect(d.send(.publish(topic: "t", event: buffer("4")), from: closer).isEmpty)
        // Gone (socket closed).
        let lost = d.connect()
        #expect(d.send(.publish(topic: "t", event: buffer("5")), from: lost).frames(to: subscriber).count == 1)
        _ = d.lose(lost)
        #expect(d.send(.publish(topic: "t", event: buffer("6")), from: lost).isEmpty)
        // A slow consumer closed by its timer while another connection is the remembered one.
        let slow = d.connect()
        _ = d.send(.subscribe(topic: "u"), from: slow)
        let publisher = d.connect()
        _ = d.writability(slow, false)
        _ = d.send(.publish(topic: "t", event: buffer("7")), from: slow)
        #expect(d.advance(d.core.settings.slowConsumerTimeout + .milliseconds(1)).disconnected.contains(slow))
        #expect(d.send(.publish(topic: "t", event: buffer("8")), from: slow).isEmpty)
        #expect(d.send(.publish(topic: "t", event: buffer("9")), from: publisher).frames(to: subscriber).count == 1)
    }
}
