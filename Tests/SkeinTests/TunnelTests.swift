import NIOCore
import Skein
import SkeinRelay
import Testing
import SkeinTestSupport

@Suite("Tunnels", .timeLimit(.minutes(1)))
struct TunnelTests {
    /// The member side of a tunnel, handed to the test: the handler keeps the tunnel open until
    /// the test is done with it.
    final class Accepted: Sendable {
        private let tunnels = Shared<[Tunnel]>([])
        let done = Gate()

        func handle(_ tunnel: Tunnel) async {
            tunnels.update { $0.append(tunnel) }
            await done.wait()
        }

        /// Forgets the tunnels accepted so far.
        func reset() { tunnels.update { $0 = [] } }

        func first(sourceLocation: SourceLocation = #_sourceLocation) async throws -> Tunnel {
            await eventually("the member to accept the tunnel", sourceLocation: sourceLocation) { !tunnels.value.isEmpty }
            return try #require(tunnels.value.first, sourceLocation: sourceLocation)
        }
    }

    @Test func messagesGoBothWaysInOrder() async throws {
        try await TestRelay.run { relay in
            let count = 2_000
            let memberSaw = Shared<[String]>([])
            let memberEnded = Gate()
            _ = try await relay.serve("echo", tunnel: { tunnel in
                do {
                    while let message = try await tunnel.receive() {
                        memberSaw.update { $0.append(message.text) }
                        try await tunnel.send("echo " + message.text)
                    }
                } catch {
                    memberSaw.update { $0.append("error: \(error)") }
                }
                memberEnded.open()
            })
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "echo", timeout: .seconds(5))
            let receiver = Task {
                var got: [String] = []
                for _ in 0..<count {
                    guard let message = try await tunnel.receive() else { break }
                    got.append(message.text)
                }
                return got
            }
            for i in 0..<count { try await tunnel.send("message \(i)") }
            let echoed = try await within(.seconds(20), "the echoes") { try await receiver.value }
            #expect(echoed == (0..<count).map { "echo message \($0)" })
            #expect(memberSaw.value == (0..<count).map { "message \($0)" })

            // Closing from the initiator ends the member's receive loop with nil.
            try await tunnel.close()
            try await within(.seconds(5), "the member's loop to end") { await memberEnded.wait() }
            #expect(memberSaw.value.count == count, "the member saw the end of the stream, not an error")
            #expect(try await tunnel.receive() == nil)
            let late = await error { try await tunnel.send("after close") }
            #expect(late as? SkeinError != nil)
        }
    }

    @Test func emptyMessagesAreMessages() async throws {
        try await TestRelay.run { relay in
            let accepted = Accepted()
            _ = try await relay.serve("sink", tunnel: accepted.handle)
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "sink", timeout: .seconds(5))
            let member = try await accepted.first()
            try await tunnel.send(ByteBuffer())
            try await tunnel.send("x")
            try await tunnel.send(ByteBuffer())
            #expect(try await member.receive()?.readableBytes == 0)
            #expect(try await member.receive()?.text == "x")
            #expect(try await member.receive()?.readableBytes == 0)
            accepted.done.open()
        }
    }

    @Test func sixteenMebibyteMessage() async throws {
        try await TestRelay.run { relay in
            let size = 16 << 20
            _ = try await relay.serve("big", tunnel: { tunnel in
                // Echo every message back whole.
                while let message = try? await tunnel.receive() {
                    try? await tunnel.send(message)
                }
            })
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "big", timeout: .seconds(5))
            // Cheap to build (the test shares two cores), yet any misplaced chunk shows: every
            // 64 KiB block starts with its own offset.
            var big = ByteBuffer(repeating: 0x3c, count: size)
            for offset in stride(from: 0, to: size, by: 1 << 16) { big.setInteger(UInt64(offset), at: offset) }
            let message = big
            let sending = Task { try await tunnel.send(message) }
            let back = try await within(.seconds(30), "the 16 MiB echo") { try await tunnel.receive() }
            try await within(.seconds(5), "the send") { try await sending.value }
            #expect(back?.readableBytes == size)
            #expect(back == message, "the message came back byte for byte")
            try await tunnel.close()
        }
    }

    @Test func tunnelMessagesAreNotBoundByMaxMessageSize() async throws {
        // maxMessageSize bounds requests, replies and events; a tunnel message may be larger, in
        // both directions, as with every Iris binding.
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.maxMessageSize = 1 << 20
            let accepted = Accepted()
            _ = try await relay.serve("big", options: options, tunnel: accepted.handle)
            let client = try await relay.connect(options: options)
            let tunnel = try await client.tunnel(cluster: "big", timeout: .seconds(5))
            let member = try await accepted.first()
            let message = ByteBuffer(repeating: 0x17, count: 3 << 20)
            let sending = Task { try await tunnel.send(message) }
            #expect(try await within(.seconds(20), "the 3 MiB message") { try await member.receive() } == message)
            try await within(.seconds(5), "the send") { try await sending.value }
            accepted.done.open()
        }
    }

    @Test func aTunnelMessageOverTheReceiversLimitEndsOnlyThatTunnel() async throws {
        try await TestRelay.run { relay in
            var limited = ConnectionOptions()
            limited.maxTunnelMessageSize = 1 << 20
            let accepted = Accepted()
            _ = try await relay.serve("big", options: limited, request: { $0.body }, tunnel: accepted.handle)
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "big", timeout: .seconds(5))
            let member = try await accepted.first()
            let sending = Task { try await tunnel.send(ByteBuffer(repeating: 1, count: (1 << 20) + 1)) }
            do {
                _ = try await within(.seconds(10), "the member's receive") { try await member.receive() }
                Issue.record("the member received a message over its limit")
            } catch let error as SkeinError {
                #expect(error == .messageTooLarge(size: (1 << 20) + 1, limit: 1 << 20))
            }
            // The initiator learns that the tunnel is gone; the member's connection still serves.
            _ = try? await sending.value
            let end = try await within(.seconds(10), "the initiator's tunnel to end") { () -> String in
                do { return try await tunnel.receive() == nil ? "closed" : "a message" } catch { return "failed: \(error)" }
            }
            #expect(end != "a message")
            let reply = try await client.request(cluster: "big", "still here", timeout: .seconds(5))
            #expect(reply.text == "still here")
            accepted.done.open()
        }
    }

    @Test func messageLargerThanTheReceiversWindow() async throws {
        // A message bigger than the receiving binding's window must still get through: the
        // receiver has to return allowance for the chunks of a message it is assembling.
        try await TestRelay.run { relay in
            let size = 6 << 20 + 12_345
            var small = ConnectionOptions()
            small.tunnelWindow = 1 << 20
            let accepted = Accepted()
            _ = try await relay.serve("big", options: small, tunnel: accepted.handle)
            let client = try await relay.connect(options: small)
            let tunnel = try await client.tunnel(cluster: "big", timeout: .seconds(5))
            let member = try await accepted.first()
            let message = ByteBuffer(repeating: 0x5a, count: size)

            let toMember = Task { try await tunnel.send(message) }
            let atMember = try await within(.seconds(20), "the message at the member") { try await member.receive() }
            try await within(.seconds(5), "the send to the member") { try await toMember.value }
            #expect(atMember?.readableBytes == size)

            let toClient = Task { try await member.send(message) }
            let atClient = try await within(.seconds(20), "the message at the client") { try await tunnel.receive() }
            try await within(.seconds(5), "the send to the client") { try await toClient.value }
            #expect(atClient == message)

            // And the window is whole again afterwards: more messages flow.
            for i in 0..<3 { try await tunnel.send("after \(i)") }
            for i in 0..<3 { #expect(try await member.receive()?.text == "after \(i)") }
            accepted.done.open()
        }
    }

    @Test func fastSenderIsHeldBackBySlowReceiver() async throws {
        let relayBuffer: UInt64 = 256 << 10
        let window: UInt64 = 256 << 10
        let chunkLimit: UInt64 = 64 << 10
        let messageSize = 16 << 10
        let messages = 160
        try await TestRelay.run({ $0.settings.tunnelBuffer = relayBuffer; $0.settings.tunnelChunkLimit = chunkLimit }) { relay in
            var options = ConnectionOptions()
            options.tunnelWindow = window
            let accepted = Accepted()
            _ = try await relay.serve("slow", options: options, tunnel: accepted.handle)
            let client = try await relay.connect(options: options)
            let tunnel = try await client.tunnel(cluster: "slow", timeout: .seconds(5))
            let member = try await accepted.first()

            // Bytes the sender has handed to `send` (and got back from it) and bytes the receiver
            // has taken out of `receive`, and the most that was ever in between.
            let books = Shared((sent: 0, received: 0, maxInFlight: 0))
            let sender = Task {
                for i in 0..<messages {
                    var message = ByteBuffer(repeating: UInt8(i % 251), count: messageSize)
                    message.setInteger(UInt32(i), at: 0)
                    try await tunnel.send(message)
                    books.update { books in
                        books.sent += messageSize
                        books.maxInFlight = max(books.maxInFlight, books.sent - books.received)
                    }
                }
            }
            let bound = Int(relayBuffer + window + chunkLimit)

            // The receiver does not read: the sender fills the relay's buffer and the receiver's
            // window, then has no allowance left and waits.
            await eventually("the sender to fill both windows") { books.value.sent >= Int(relayBuffer + window) - messageSize }
            try await Task.sleep(for: .milliseconds(300))
            let stalled = books.value.sent
            #expect(stalled <= bound, "sent \(stalled) bytes with nothing received; bound \(bound)")
            #expect(stalled < messages * messageSize, "the sender is blocked, not finished")
            try await Task.sleep(for: .milliseconds(100))
            #expect(books.value.sent == stalled, "no progress while the receiver does not read")

            // Now the receiver reads slowly; the sender keeps pace with it, never further ahead.
            for i in 0..<messages {
                let message = try #require(try await within(.seconds(10), "message \(i)") { try await member.receive() })
                #expect(message.readableBytes == messageSize)
                #expect(message.getInteger(at: 0, as: UInt32.self) == UInt32(i), "in order")
                books.update { $0.received += messageSize }
                if i % 4 == 0 { try await Task.sleep(for: .milliseconds(1)) }
            }
            try await within(.seconds(10), "the sender") { try await sender.value }
            #expect(books.value.maxInFlight <= bound, "in flight at most \(bound), saw \(books.value.maxInFlight)")
            accepted.done.open()
        }
    }

    @Test func cancellingABlockedSendLeavesTheTunnelUsable() async throws {
        let buffer: UInt64 = 64 << 10
        try await TestRelay.run({ $0.settings.tunnelBuffer = buffer }) { relay in
            var options = ConnectionOptions()
            options.tunnelWindow = buffer
            let accepted = Accepted()
            _ = try await relay.serve("stall", options: options, tunnel: accepted.handle)
            let client = try await relay.connect(options: options)
            let tunnel = try await client.tunnel(cluster: "stall", timeout: .seconds(5))
            let member = try await accepted.first()

            // "first" waits, unread, at the member; the big message behind it fills both windows.
            try await tunnel.send("first")
            let big = Task { try await tunnel.send(ByteBuffer(repeating: 1, count: 1 << 20)) }
            try await Task.sleep(for: .milliseconds(200))
            big.cancel()
            let outcome = try await within(.seconds(5), "the cancelled send") { await error { try await big.value } }
            #expect(outcome is CancellationError)

            // The unfinished message is discarded by the receiver, and its allowance is returned:
            // later messages, even large ones, get through.
            // The sender has no allowance left until the member reads.
            let tail = Task {
                try await tunnel.send("after")
                try await tunnel.send(ByteBuffer(repeating: 2, count: 512 << 10))
            }
            #expect(try await within(.seconds(5), "first") { try await member.receive() }?.text == "first")
            #expect(try await within(.seconds(5), "after") { try await member.receive() }?.text == "after")
            let last = try await within(.seconds(10), "the last message") { try await member.receive() }
            #expect(last == ByteBuffer(repeating: 2, count: 512 << 10))
            try await within(.seconds(5), "the last send") { try await tail.value }
            accepted.done.open()
        }
    }

    @Test func cancellingATunnelBuildClosesTheTunnelIfItIsBuiltLater() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect(options: .iris)
            let opening = Task { try await client.tunnel(cluster: "later", timeout: .seconds(10)) }
            await eventually("the binding to start the build") { client.tunnelsInProgress == 1 }
            try await client.barrier()
            opening.cancel()
            let outcome = try await within(.seconds(5), "the cancelled build") { await error { try await opening.value } }
            #expect(outcome is CancellationError)
            // A member joins and accepts the build the relay still holds; the binding closes it.
            let ended = Gate()
            _ = try await relay.serve("later", tunnel: { tunnel in
                if (try? await tunnel.receive()) == nil { ended.open() }
            })
            try await within(.seconds(5), "the abandoned tunnel to close") { await ended.wait() }
        }
    }

    @Test func twoTasksReceivingFromOneTunnel() async throws {
        try await TestRelay.run { relay in
            let accepted = Accepted()
            _ = try await relay.serve("fan", tunnel: accepted.handle)
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "fan", timeout: .seconds(5))
            let member = try await accepted.first()
            let a = Task { try await tunnel.receive()?.text }
            let b = Task { try await tunnel.receive()?.text }
            try await Task.sleep(for: .milliseconds(50))
            try await member.send("x")
            try await member.send("y")
            let got = try await within(.seconds(5), "both receivers") { [try await a.value, try await b.value] }
            #expect(Set(got.compactMap { $0 }) == ["x", "y"])
            accepted.done.open()
        }
    }

    @Test func bothSidesClosingAtOnce() async throws {
        try await TestRelay.run { relay in
            let accepted = Accepted()
            _ = try await relay.serve("pair", tunnel: accepted.handle)
            let client = try await relay.connect()
            for _ in 0..<20 {
                let tunnel = try await client.tunnel(cluster: "pair", timeout: .seconds(5))
                try await tunnel.send("x")
                let member = try await accepted.first()
                #expect(try await member.receive()?.text == "x")
                let a = Task { try await tunnel.close() }
                let b = Task { try await member.close() }
                try await within(.seconds(5), "both closes") {
                    try await a.value
                    try await b.value
                }
                #expect(try await tunnel.receive() == nil)
                #expect(try await member.receive() == nil)
                accepted.reset()
            }
            accepted.done.open()
        }
    }

    @Test func memberClosesGracefully() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.serve("talker", tunnel: { tunnel in
                try? await tunnel.send("hello")
                try? await tunnel.send("bye")
                try? await tunnel.close()
            })
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "talker", timeout: .seconds(5))
            #expect(try await tunnel.receive()?.text == "hello")
            #expect(try await tunnel.receive()?.text == "bye")
            #expect(try await within(.seconds(5), "the end of the stream") { try await tunnel.receive() } == nil)
            let late = await error { try await tunnel.send("anyone?") }
            #expect(late as? SkeinError == .tunnelClosed(reason: ""), "the other side closed gracefully")
            try await tunnel.close()  // closing a closed tunnel is a no-op
        }
    }

    @Test func memberConnectionClosingMidTunnelFailsTheInitiatorsTunnel() async throws {
        try await TestRelay.run { relay in
            let accepted = Accepted()
            let member = try await relay.serve("fragile", tunnel: accepted.handle)
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "fragile", timeout: .seconds(5))
            let memberTunnel = try await accepted.first()
            try await tunnel.send("ping")
            #expect(try await memberTunnel.receive()?.text == "ping")

            let pending = Task { try await tunnel.receive() }
            try await member.close()
            let outcome = try await within(.seconds(5), "the initiator's receive") { await error { try await pending.value } }
            guard let failure = outcome as? SkeinError, failure.code == .tunnelClosed else {
                Issue.record("expected tunnelClosed, got \(String(describing: outcome))")
                return
            }
            let reason = failure.detail
            #expect(!reason.isEmpty, "a failed tunnel carries a reason")
            let send = await error { try await tunnel.send("still there?") }
            #expect(send as? SkeinError == .tunnelClosed(reason: reason))
            accepted.done.open()
            // The client's connection itself is fine.
            try await client.barrier()
        }
    }

    @Test func initiatorConnectionClosingMidTunnelFailsTheMembersTunnel() async throws {
        try await TestRelay.run { relay in
            let accepted = Accepted()
            _ = try await relay.serve("fragile", tunnel: accepted.handle)
            let client = try await relay.connect()
            let tunnel = try await client.tunnel(cluster: "fragile", timeout: .seconds(5))
            let memberTunnel = try await accepted.first()
            try await tunnel.send("ping")
            #expect(try await memberTunnel.receive()?.text == "ping")
            try await client.close()
            let outcome = try await within(.seconds(5), "the member's receive") { await error { try await memberTunnel.receive() } }
            guard let failure = outcome as? SkeinError, failure.code == .tunnelClosed else {
                Issue.record("expected tunnelClosed, got \(String(describing: outcome))")
                return
            }
            let reason = failure.detail
            #expect(!reason.isEmpty)
            accepted.done.open()
        }
    }

    @Test func skein1TunnelToAClusterWithoutMembersFailsAtOnce() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect()
            let start = ContinuousClock.now
            let outcome = await error { try await client.tunnel(cluster: "nobody", timeout: .seconds(30)) }
            #expect(outcome as? SkeinError == .noMembers("nobody"))
            #expect(ContinuousClock.now - start < .seconds(10))
        }
    }

    @Test func tunnelToAClusterWithoutMembersTimesOut() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect(options: .iris)
            let start = ContinuousClock.now
            let outcome = await error { try await client.tunnel(cluster: "nobody", timeout: .milliseconds(200)) }
            #expect(outcome as? SkeinError == .timedOut)
            #expect(ContinuousClock.now - start >= .milliseconds(190))
            // A member that joins before the deadline gets it.
            let late = Task { try await client.tunnel(cluster: "late", timeout: .seconds(10)) }
            // Once the binding has queued TUNNEL INIT, a barrier behind it means the relay holds it.
            await eventually("the binding to start the build") { client.tunnelsInProgress == 1 }
            try await client.barrier()
            let accepted = Accepted()
            _ = try await relay.serve("late", tunnel: accepted.handle)
            let tunnel = try await within(.seconds(10), "the late tunnel") { try await late.value }
            try await tunnel.send("hi")
            #expect(try await accepted.first().receive()?.text == "hi")
            accepted.done.open()
        }
    }

    @Test func manyTunnelsAtOnce() async throws {
        try await TestRelay.run { relay in
            for _ in 0..<4 {
                _ = try await relay.serve("pool", tunnel: { tunnel in
                    while let message = try? await tunnel.receive() { try? await tunnel.send(message) }
                })
            }
            let client = try await relay.connect()
            let ok = try await within(.seconds(20), "50 tunnels") {
                try await withThrowingTaskGroup(of: Bool.self) { group in
                    for t in 0..<50 {
                        group.addTask {
                            let tunnel = try await client.tunnel(cluster: "pool", timeout: .seconds(10))
                            var good = true
                            for i in 0..<20 {
                                try await tunnel.send("\(t).\(i)")
                                let echoed = try await tunnel.receive()?.text
                                good = good && echoed == "\(t).\(i)"
                            }
                            try await tunnel.close()
                            return good
                        }
                    }
                    return try await group.allSatisfy { $0 }
                }
            }
            #expect(ok)
        }
    }
}
