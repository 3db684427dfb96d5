import NIOCore
import Skein
import Testing
import SkeinTestSupport

@Suite("Failures", .timeLimit(.minutes(1)))
struct FailureTests {
    @Test func skein1MemberLeavingMidRequestGivesMemberLostAtOnce() async throws {
        try await TestRelay.run { relay in
            let started = Gate()
            let leaving = try await relay.serve("flaky") { _ in
                started.open()
                try await Task.sleep(for: .seconds(60))
                return ByteBuffer(string: "never")
            }
            let client = try await relay.connect()
            let begin = ContinuousClock.now
            let call = Task { try await client.request(cluster: "flaky", "work", timeout: .seconds(30)) }
            try await within(.seconds(5), "the member to start") { await started.wait() }
            let secondGot = Shared(0)
            _ = try await relay.serve("flaky") { request in
                secondGot.update { $0 += 1 }
                return request.body
            }
            try await leaving.close()
            let outcome = try await within(.seconds(10), "the caller's answer") { await error { try await call.value } }
            guard (outcome as? SkeinError)?.code == .memberLost else {
                Issue.record("expected memberLost, got \(String(describing: outcome))")
                return
            }
            #expect(ContinuousClock.now - begin < .seconds(20), "told at once, not at the 30 s deadline")
            #expect(secondGot.value == 0, "the request was not handed to a second member")
            #expect(try await client.request(cluster: "flaky", "next", timeout: .seconds(5)).text == "next")
        }
    }

    @Test func memberLeavingMidRequestGivesExactlyOneAnswerAtTheDeadline() async throws {
        try await TestRelay.run { relay in
            let started = Gate()
            let leaving = try await relay.serve("flaky") { _ in
                started.open()
                try await Task.sleep(for: .seconds(60))
                return ByteBuffer(string: "never")
            }
            let client = try await relay.connect(options: .iris)
            let begin = ContinuousClock.now
            let call = Task { try await client.request(cluster: "flaky", "work", timeout: .milliseconds(800)) }
            try await within(.seconds(5), "the member to start") { await started.wait() }

            // A second member joins, then the first leaves. The request was handed over already,
            // so it is not re-sent to the newcomer (at most once): the caller times out.
            let secondGot = Shared(0)
            _ = try await relay.serve("flaky") { request in
                secondGot.update { $0 += 1 }
                return request.body
            }
            try await leaving.close()
            let outcome = try await within(.seconds(5), "the caller's answer") { await error { try await call.value } }
            #expect(outcome as? SkeinError == .timedOut)
            #expect(ContinuousClock.now - begin >= .milliseconds(790), "the answer comes at the deadline")
            #expect(secondGot.value == 0, "the request was not handed to a second member")
            // The caller's connection carries on: the remaining member serves the next request.
            #expect(try await client.request(cluster: "flaky", "next", timeout: .seconds(5)).text == "next")
            #expect(secondGot.value == 1)
        }
    }

    @Test func memberSocketDyingMidRequestAndMidTunnel() async throws {
        // No CLOSE frame: the member's socket just goes away.
        try await TestRelay.run { relay in
            let started = Gate()
            let tunnelOpen = Gate()
            let member = try await relay.serve(
                "doomed",
                request: { _ in
                    started.open()
                    try await Task.sleep(for: .seconds(60))
                    return ByteBuffer()
                },
                tunnel: { _ in
                    tunnelOpen.open()
                    try? await Task.sleep(for: .seconds(60))
                })
            let client = try await relay.connect(options: .iris)
            let tunnel = try await client.tunnel(cluster: "doomed", timeout: .seconds(5))
            try await within(.seconds(5), "the member's tunnel") { await tunnelOpen.wait() }
            let begin = ContinuousClock.now
            let call = Task { try await client.request(cluster: "doomed", "x", timeout: .milliseconds(600)) }
            try await within(.seconds(5), "the member to start") { await started.wait() }

            member.abort()

            let receive = try await within(.seconds(5), "the tunnel to fail") { await error { try await tunnel.receive() } }
            guard let failure = receive as? SkeinError, failure.code == .tunnelClosed, !failure.detail.isEmpty else {
                Issue.record("expected tunnelClosed with a reason, got \(String(describing: receive))")
                return
            }
            let outcome = try await within(.seconds(5), "the caller's answer") { await error { try await call.value } }
            #expect(outcome as? SkeinError == .timedOut)
            #expect(ContinuousClock.now - begin >= .milliseconds(590))
            let reason2 = await member.waitUntilClosed()
            #expect(!reason2.isEmpty, "the member's own side reports the loss")
        }
    }

    @Test func relayShuttingDownTellsSkein1CallersItsReasonNotMemberLost() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.serve("stuck") { _ in
                try await Task.sleep(for: .seconds(60))
                return ByteBuffer()
            }
            let client = try await relay.connect()
            let handedOver = Task { try await client.request(cluster: "stuck", "a", timeout: .seconds(30)) }
            await eventually("the relay to hold the request") { await relay.pendingRequests == 1 }
            await relay.shutDown()
            let outcome = try await within(.seconds(10), "the pending call to fail") { await error { try await handedOver.value } }
            #expect(outcome as? SkeinError == .connectionClosed(reason: "relay shutting down"))
        }
    }

    @Test func relayShuttingDownFailsPendingCallsWithItsReason() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.serve("stuck") { _ in
                try await Task.sleep(for: .seconds(60))
                return ByteBuffer()
            }
            // v1.0-draft2, so the request to "nobody" waits (a skein/1 one fails at once).
            let client = try await relay.connect(options: .iris)
            let subscription = try await client.subscribe(topic: "news")
            let handedOver = Task { try await client.request(cluster: "stuck", "a", timeout: .seconds(30)) }
            let waiting = Task { try await client.request(cluster: "nobody", "b", timeout: .seconds(30)) }
            let events = Task {
                var count = 0
                for try await _ in subscription { count += 1 }
                return count
            }
            await eventually("the relay to hold both requests") { await relay.pendingRequests == 2 }

            await relay.shutDown()

            for call in [handedOver, waiting] {
                let outcome = try await within(.seconds(10), "a pending call to fail") { await error { try await call.value } }
                #expect(outcome as? SkeinError == .connectionClosed(reason: "relay shutting down"))
            }
            let ended = try await within(.seconds(5), "the subscription to end") { await error { try await events.value } }
            #expect(ended as? SkeinError == .connectionClosed(reason: "relay shutting down"))
            #expect(await client.waitUntilClosed() == "relay shutting down")
            // Later calls fail at once with the same error.
            let later = await error { try await client.request(cluster: "stuck", "c", timeout: .seconds(5)) }
            #expect(later as? SkeinError == .connectionClosed(reason: "relay shutting down"))
            let publish = await error { try await client.publish(topic: "news", "x") }
            #expect(publish as? SkeinError == .connectionClosed(reason: "relay shutting down"))
        }
    }

    @Test func relayShuttingDownFailsOpenTunnels() async throws {
        try await TestRelay.run { relay in
            let memberSide = Shared<Tunnel?>(nil)
            let done = Gate()
            _ = try await relay.serve("t", tunnel: { tunnel in
                memberSide.update { $0 = tunnel }
                await done.wait()
            })
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "t", timeout: .seconds(5))
            await eventually("the member's side") { memberSide.value != nil }
            let pending = Task { try await tunnel.receive() }
            await relay.shutDown()
            let outcome = try await within(.seconds(10), "the tunnel to fail") { await error { try await pending.value } }
            switch (outcome as? SkeinError)?.code {
            case .tunnelClosed?, .connectionClosed?:
                let reason = (outcome as? SkeinError)?.detail ?? ""
                #expect(reason.contains("relay shutting down"), "reason: \(reason)")
            default:
                Issue.record("expected the tunnel to fail with the relay's reason, got \(String(describing: outcome))")
            }
            let memberOutcome = await error { try await memberSide.value!.receive() }
            #expect(memberOutcome is SkeinError)
            done.open()
        }
    }

    @Test func relayClosesASubscriberThatNeverReadsAndThePublisherCarriesOn() async throws {
        try await TestRelay.run({ $0.settings.slowConsumerTimeout = .milliseconds(500) }) { relay in
            var options = ConnectionOptions()
            options.receiveBuffer = 2
            let stuck = try await relay.connect(options: options)
            let publisher = try await relay.connect()
            let subscription = try await stuck.subscribe(topic: "firehose")
            try await stuck.barrier()
            let flood = Task {
                for i in 0..<1_024 {
                    var event = ByteBuffer(repeating: 0, count: 64 << 10)
                    event.setInteger(UInt32(i), at: 0)
                    try await publisher.publish(topic: "firehose", event)
                }
            }
            // The relay ends the subscriber's connection; the publisher is released and finishes.
            try await within(.seconds(20), "the publisher") { try await flood.value }
            await eventually("the relay to drop the subscriber") { await relay.connectionCount == 1 }
            try await publisher.barrier()
            // The stalled binding is not reading, so it learns of the end only when its consumer
            // catches up: the events that made it through, then the failure.
            let ended = try await within(.seconds(10), "the subscription to end") {
                await error { for try await _ in subscription {} }
            }
            guard (ended as? SkeinError)?.code == .connectionClosed else {
                Issue.record("expected connectionClosed, got \(String(describing: ended))")
                return
            }
            #expect(!(await stuck.waitUntilClosed()).isEmpty)
        }
    }

    @Test func closeIsPromptEvenWhileASubscriptionIsStalled() async throws {
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.receiveBuffer = 2
            let stalled = try await relay.connect(options: options)
            let publisher = try await relay.connect()
            let subscription = try await stalled.subscribe(topic: "pile")
            try await stalled.barrier()
            // More than one read's worth (the binding reads at most 1 MiB at a time), less than
            // the relay holds for a connection before it pauses the publisher.
            for _ in 0..<128 { try await publisher.publish(topic: "pile", ByteBuffer(repeating: 1, count: 64 << 10)) }
            try await publisher.barrier()
            // The binding stopped reading: its feed is full and nobody iterates.
            await eventually("the binding to stop reading") { await !stalled.isReading }
            let start = ContinuousClock.now
            try await within(.seconds(10), "close") { try await stalled.close() }
            #expect(ContinuousClock.now - start < .seconds(4), "close waited for the relay's answer it was not reading (it gives up after 5 s)")
            // What was delivered can still be read, then the subscription ends.
            var count = 0
            let end = await error { for try await _ in subscription { count += 1 } }
            if let end {
                #expect(end as? SkeinError == .connectionClosed(reason: "connection to the relay lost"))
            }
            // The spec: on CLOSE the relay "finishes delivering what it already accepted for that
            // connection, answers 02 00, and closes".
            #expect(end == nil, "the close was graceful")
            #expect(count == 128, "everything the relay accepted before the close is delivered")
        }
    }

    @Test func gracefulCloseFailsPendingCallsAndLaterCalls() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect(options: .iris)
            let waiting = Task { try await client.request(cluster: "nobody", "b", timeout: .seconds(30)) }
            await eventually("the relay to hold the request") { await relay.pendingRequests == 1 }
            try await within(.seconds(5), "close") { try await client.close() }
            let outcome = try await within(.seconds(5), "the pending call") { await error { try await waiting.value } }
            guard (outcome as? SkeinError)?.code == .connectionClosed else {
                Issue.record("expected connectionClosed, got \(String(describing: outcome))")
                return
            }
            let later = await error { try await client.request(cluster: "nobody", "c", timeout: .seconds(5)) }
            guard (later as? SkeinError)?.code == .connectionClosed else {
                Issue.record("expected connectionClosed, got \(String(describing: later))")
                return
            }
            #expect(await client.waitUntilClosed() == "")
            try await client.close()  // a second close is a no-op
            await eventually("the relay to forget the connection") { await relay.connectionCount == 0 }
        }
    }

    @Test func memberLeavingWhileRequestsQueueUpDoesNotLoseOtherMembersWork() async throws {
        // Members come and go while callers keep asking: every call gets exactly one answer.
        try await TestRelay.run { relay in
            _ = try await relay.serve("churn") { $0.body }
            let client = try await relay.connect()
            let answers = Task {
                try await withThrowingTaskGroup(of: Bool.self) { group in
                    for i in 0..<400 {
                        group.addTask {
                            do {
                                return try await client.request(cluster: "churn", "\(i)", timeout: .seconds(2)).text == "\(i)"
                            } catch SkeinError.Code.timedOut, SkeinError.Code.memberLost {
                                return true  // handed to a member that left: that is the one answer
                            }
                        }
                    }
                    return try await group.allSatisfy { $0 }
                }
            }
            for _ in 0..<5 {
                let member = try await relay.serve("churn") { request in
                    try? await Task.sleep(for: .milliseconds(2))
                    return request.body
                }
                try await Task.sleep(for: .milliseconds(20))
                try await member.close()
            }
            #expect(try await within(.seconds(20), "every answer") { try await answers.value })
        }
    }
}
