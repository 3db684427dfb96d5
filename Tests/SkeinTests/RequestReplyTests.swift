import NIOCore
import Skein
import Testing
import SkeinTestSupport

@Suite("Request / reply", .timeLimit(.minutes(1)))
struct RequestReplyTests {
    @Test func replyComesBackFromTheMember() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.serve("echo") { request in
                var reply = ByteBuffer(string: "echo: ")
                reply.writeImmutableBuffer(request.body)
                return reply
            }
            let client = try await relay.connect()
            let reply = try await client.request(cluster: "echo", "hello", timeout: .seconds(5))
            #expect(reply.text == "echo: hello")
            // Binary bodies go through untouched.
            let bytes: [UInt8] = Array(0...255) + [0, 0, 0xff]
            let echoed = try await client.request(cluster: "echo", bytes, timeout: .seconds(5))
            #expect(Array(echoed.readableBytesView.dropFirst(6)) == bytes)
        }
    }

    @Test func emptyReplyBodyIsASuccess() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.serve("void") { _ in ByteBuffer() }
            let client = try await relay.connect()
            let reply = try await client.request(cluster: "void", "anything", timeout: .seconds(5))
            #expect(reply.readableBytes == 0)
            // An empty request body too.
            let again = try await client.request(cluster: "void", ByteBuffer(), timeout: .seconds(5))
            #expect(again.readableBytes == 0)
        }
    }

    @Test func faultCarriesTheMembersText() async throws {
        struct Oops: Error, CustomStringConvertible { var description: String { "oops, plain error" } }
        try await TestRelay.run { relay in
            _ = try await relay.serve("faulty") { request in
                if request.body.text == "plain" { throw Oops() }
                throw SkeinFault("boom: \(request.body.text) — ünïcode")
            }
            let client = try await relay.connect()
            let fault = await error { try await client.request(cluster: "faulty", "bad input", timeout: .seconds(5)) }
            #expect(fault as? SkeinError == .remoteFault("boom: bad input — ünïcode"))
            let plain = await error { try await client.request(cluster: "faulty", "plain", timeout: .seconds(5)) }
            #expect(plain as? SkeinError == .remoteFault("oops, plain error"))
        }
    }

    @Test func handlerSlowerThanTheDeadlineTimesOut() async throws {
        try await TestRelay.run { relay in
            let release = Gate()
            let started = Gate()
            let handled = Shared(0)
            let seenTimeout = Shared<Duration?>(nil)
            _ = try await relay.serve("slow") { request in
                seenTimeout.update { $0 = $0 ?? request.timeout }
                started.open()
                await release.wait()
                handled.update { $0 += 1 }
                return ByteBuffer(string: "too late")
            }
            let client = try await relay.connect()
            let start = ContinuousClock.now
            let outcome = await error { try await client.request(cluster: "slow", "hurry", timeout: .milliseconds(300)) }
            let elapsed = ContinuousClock.now - start
            #expect(outcome as? SkeinError == .timedOut)
            #expect(started.isOpen)
            // The member saw the caller's remaining time.
            let timeout = try #require(seenTimeout.value)
            #expect(timeout > .zero && timeout <= .milliseconds(300))
            #expect(elapsed >= .milliseconds(290), "the relay owns the deadline: no earlier answer")
            // The member answers late; the relay drops the reply, and the connection is fine.
            release.open()
            await eventually("the late handler to finish") { handled.value == 1 }
            let fast = try await client.request(cluster: "slow", "again", timeout: .seconds(5))
            #expect(fast.text == "too late")
        }
    }

    @Test func timeoutZeroTimesOutAtOnce() async throws {
        try await TestRelay.run { relay in
            let called = Shared(0)
            _ = try await relay.serve("echo") { request in
                called.update { $0 += 1 }
                return request.body
            }
            let client = try await relay.connect()
            for _ in 0..<3 {
                let outcome = await error { try await client.request(cluster: "echo", "now", timeout: .zero) }
                #expect(outcome as? SkeinError == .timedOut)
            }
            // A negative timeout is treated as zero.
            let negative = await error { try await client.request(cluster: "echo", "now", timeout: .milliseconds(-5)) }
            #expect(negative as? SkeinError == .timedOut)
            // The member was never bothered; a normal request still works.
            #expect(try await client.request(cluster: "echo", "later", timeout: .seconds(5)).text == "later")
            #expect(called.value == 1)
        }
    }

    @Test func requestWaitsForAMemberThatJoinsBeforeTheDeadline() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect(options: .iris)
            let call = Task { try await client.request(cluster: "late", "are you there?", timeout: .seconds(10)) }
            // The relay holds the request with no member to take it.
            await eventually("the relay to hold the request") { await relay.pendingRequests == 1 }
            _ = try await relay.serve("late") { request in ByteBuffer(string: "yes: " + request.body.text) }
            let reply = try await within(.seconds(10), "the waiting request") { try await call.value }
            #expect(reply.text == "yes: are you there?")
        }
    }

    @Test func requestWithoutMembersTimesOutAtItsDeadline() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect(options: .iris)
            let start = ContinuousClock.now
            let outcome = await error { try await client.request(cluster: "nobody", "hello?", timeout: .milliseconds(300)) }
            #expect(outcome as? SkeinError == .timedOut)
            #expect(ContinuousClock.now - start >= .milliseconds(290))
            // A member of another cluster does not help.
            _ = try await relay.serve("somebody")
            let again = await error { try await client.request(cluster: "nobody", "hello?", timeout: .milliseconds(100)) }
            #expect(again as? SkeinError == .timedOut)
        }
    }

    @Test func skein1RequestWithoutMembersFailsAtOnceWithNoMembers() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect()
            #expect(client.protocolVersion == "skein/2")
            let start = ContinuousClock.now
            let outcome = await error { try await client.request(cluster: "nobody", "hello?", timeout: .seconds(30)) }
            #expect(outcome as? SkeinError == .noMembers("nobody"))
            #expect(ContinuousClock.now - start < .seconds(10), "told at once, not at the 30 s deadline")
            // Once a member exists, the same call succeeds.
            _ = try await relay.serve("nobody") { $0.body }
            #expect(try await client.request(cluster: "nobody", "now?", timeout: .seconds(5)).text == "now?")
        }
    }

    @Test func memberCanCallItsOwnCluster() async throws {
        try await TestRelay.run { relay in
            let member = try await relay.serve("self") { request in ByteBuffer(string: "me: " + request.body.text) }
            #expect(try await member.request(cluster: "self", "hi", timeout: .seconds(5)).text == "me: hi")
        }
    }

    @Test func largeBodiesBothWays() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.serve("mirror") { request in
                // Same size back, first and last bytes swapped, so the reply is not the request.
                var reply = request.body
                let count = reply.readableBytes
                let first = reply.getInteger(at: reply.readerIndex, as: UInt8.self)!
                let last = reply.getInteger(at: reply.readerIndex + count - 1, as: UInt8.self)!
                reply.setInteger(last, at: reply.readerIndex)
                reply.setInteger(first, at: reply.readerIndex + count - 1)
                return reply
            }
            let client = try await relay.connect()
            let size = 16 << 20
            var body = ByteBuffer(repeating: 0xab, count: size)
            body.setInteger(UInt8(1), at: 0)
            body.setInteger(UInt8(2), at: size - 1)
            for offset in stride(from: 4096, to: size - 8, by: 1 << 20) { body.setInteger(UInt64(offset), at: offset) }
            let start = ContinuousClock.now
            let reply = try await client.request(cluster: "mirror", body, timeout: .seconds(20))
            let elapsed = ContinuousClock.now - start
            var expected = body
            expected.setInteger(UInt8(2), at: 0)
            expected.setInteger(UInt8(1), at: size - 1)
            #expect(reply == expected)
            #expect(elapsed < .seconds(10), "16 MiB each way took \(elapsed)")
        }
    }

    @Test func oversizedMessagesFailAloneWithoutKillingTheConnection() async throws {
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.maxMessageSize = 1 << 20
            _ = try await relay.serve("echo", options: options) { request in
                request.body.text == "big please" ? ByteBuffer(repeating: 7, count: 2 << 20) : request.body
            }
            var irisOptions = options
            irisOptions.protocolVersion = .irisDraft2
            let client = try await relay.connect(options: irisOptions)
            let pending = Task { try await client.request(cluster: "nobody", "waiting", timeout: .seconds(30)) }
            try await client.barrier()

            let tooBig = ByteBuffer(repeating: 1, count: (1 << 20) + 1)
            let request = await error { try await client.request(cluster: "echo", tooBig, timeout: .seconds(5)) }
            #expect(request as? SkeinError == .messageTooLarge(size: (1 << 20) + 1, limit: 1 << 20))
            let publish = await error { try await client.publish(topic: "t", tooBig) }
            #expect(publish as? SkeinError == .messageTooLarge(size: (1 << 20) + 1, limit: 1 << 20))
            let broadcast = await error { try await client.broadcast(cluster: "echo", tooBig) }
            #expect(broadcast as? SkeinError == .messageTooLarge(size: (1 << 20) + 1, limit: 1 << 20))
            // A member whose handler returns too much answers with a fault instead.
            let reply = await error { try await client.request(cluster: "echo", "big please", timeout: .seconds(5)) }
            guard (reply as? SkeinError)?.code == .remoteFault else {
                Issue.record("expected a fault, got \(String(describing: reply))")
                return
            }
            // Both connections are still up, and the other pending call is untouched.
            #expect(try await client.request(cluster: "echo", "small", timeout: .seconds(5)).text == "small")
            pending.cancel()
        }
    }

    @Test func queuedRequestSeesTheTimeItHasLeft() async throws {
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.maxConcurrentHandlers = 1
            let release = Gate()
            let seen = Shared<[String: Duration]>([:])
            _ = try await relay.serve("single", options: options) { request in
                seen.update { $0[request.body.text] = request.timeout }
                if request.body.text == "first" { await release.wait() }
                return request.body
            }
            let client = try await relay.connect()
            let first = Task { try await client.request(cluster: "single", "first", timeout: .seconds(10)) }
            await eventually("the first request to run") { seen.value["first"] != nil }
            let second = Task { try await client.request(cluster: "single", "second", timeout: .seconds(8)) }
            // The relay has "second" (and hands it straight over); the member queues it.
            await eventually("the relay to hold both requests") { await relay.pendingRequests == 2 }
            try await Task.sleep(for: .milliseconds(1500))
            release.open()
            #expect(try await first.value.text == "first")
            #expect(try await second.value.text == "second")
            let left = try #require(seen.value["second"])
            #expect(left <= .milliseconds(6600), "the time spent queued counts against the deadline: \(left)")
        }
    }

    @Test func cancellingACallerEndsItsWaitAtOnce() async throws {
        try await TestRelay.run { relay in
            let release = Gate()
            _ = try await relay.serve("stuck") { _ in
                await release.wait()
                return ByteBuffer(string: "finally")
            }
            let client = try await relay.connect()
            let call = Task { try await client.request(cluster: "stuck", "x", timeout: .seconds(30)) }
            await eventually("the request to reach the member") { await relay.pendingRequests == 1 }
            call.cancel()
            let outcome = try await within(.seconds(5), "the cancelled request") { await error { try await call.value } }
            #expect(outcome is CancellationError)
            release.open()
            // The relay's answer to the cancelled request is dropped; the next call gets its own.
            #expect(try await client.request(cluster: "stuck", "y", timeout: .seconds(5)).text == "finally")

            // Already cancelled before the call: throws at once, nothing waits 30 s.
            let early = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await client.request(cluster: "nobody-home", "z", timeout: .seconds(30))
            }
            let earlyOutcome = try await within(.seconds(5), "the pre-cancelled request") { await error { try await early.value } }
            #expect(earlyOutcome is CancellationError)
        }
    }
}

@Suite("Connection arguments")
struct ConnectionArgumentTests {
    @Test func aMemberNeedsAClusterName() async throws {
        try await TestRelay.run { relay in
            await #expect(throws: SkeinError.invalidName("a member needs a non-empty cluster name")) {
                _ = try await Skein.serve(cluster: "", to: relay.endpoint, request: { $0.body })
            }
        }
    }
}
