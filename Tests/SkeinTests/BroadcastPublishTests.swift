import NIOCore
import Skein
import Testing
import SkeinTestSupport

@Suite("Broadcast and publish/subscribe", .timeLimit(.minutes(1)))
struct BroadcastPublishTests {
    @Test func broadcastReachesEveryMemberExactlyOnceIncludingASenderThatIsAMember() async throws {
        try await TestRelay.run { relay in
            let memberCount = 5
            let perSender = 200
            let inboxes = (0..<memberCount).map { _ in Shared<[String]>([]) }
            var fleet: [SkeinConnection] = []
            for inbox in inboxes {
                fleet.append(try await relay.serve("fleet", broadcast: { message in inbox.update { $0.append(message.text) } }))
            }
            let members = fleet
            let strays = Shared(0)
            let bystander = try await relay.serve("elsewhere", broadcast: { _ in strays.update { $0 += 1 } })
            let client = try await relay.connect()

            // A member and a plain client broadcast at the same time.
            async let fromMember: Void = {
                for i in 0..<perSender { try await members[0].broadcast(cluster: "fleet", "m:\(i)") }
                try await members[0].broadcast(cluster: "fleet", "m:end")
            }()
            async let fromClient: Void = {
                for i in 0..<perSender { try await client.broadcast(cluster: "fleet", "c:\(i)") }
                try await client.broadcast(cluster: "fleet", "c:end")
            }()
            try await fromMember
            try await fromClient

            // Each sender's last message arrives after all its others (FIFO per sender, per member).
            await eventually("every member to get both senders' last broadcast") {
                inboxes.allSatisfy { $0.value.contains("m:end") && $0.value.contains("c:end") }
            }
            // Anything duplicated would have been sent with the original; a round trip through
            // each member's connection makes sure it would have been read by now.
            for member in members { try await member.barrier() }
            try await bystander.barrier()

            let expectedMember = (0..<perSender).map { "m:\($0)" } + ["m:end"]
            let expectedClient = (0..<perSender).map { "c:\($0)" } + ["c:end"]
            for (index, inbox) in inboxes.enumerated() {
                let got = inbox.value
                #expect(got.filter { $0.hasPrefix("m:") } == expectedMember, "member \(index): the member sender's broadcasts")
                #expect(got.filter { $0.hasPrefix("c:") } == expectedClient, "member \(index): the client sender's broadcasts")
                #expect(got.count == expectedMember.count + expectedClient.count, "member \(index): nothing else")
            }
            #expect(strays.value == 0, "a member of another cluster got nothing")
        }
    }

    @Test func broadcastToAClusterWithoutMembersIsHarmless() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect()
            try await client.broadcast(cluster: "empty", "into the void")
            try await client.barrier()
        }
    }

    @Test func publishReachesEverySubscriberIncludingThePublisherInOrderPerPublisher() async throws {
        try await TestRelay.run { relay in
            let events = 10_000
            let publisherA = try await relay.connect()
            let publisherB = try await relay.connect()
            var subscribers = [publisherA]
            for _ in 0..<3 { subscribers.append(try await relay.connect()) }
            var collectors: [Task<[String], any Error>] = []
            for subscriber in subscribers {
                let subscription = try await subscriber.subscribe(topic: "ticks")
                collectors.append(
                    Task {
                        var got: [String] = []
                        got.reserveCapacity(2 * events)
                        for try await event in subscription {
                            got.append(event.text)
                            if got.count == 2 * events { break }
                        }
                        return got
                    })
                try await subscriber.barrier()
            }
            // A subscriber of another topic gets none of it.
            let other = try await relay.connect()
            let otherSubscription = try await other.subscribe(topic: "tocks")
            try await other.barrier()

            async let a: Void = { for i in 0..<events { try await publisherA.publish(topic: "ticks", "A \(i)") } }()
            async let b: Void = { for i in 0..<events { try await publisherB.publish(topic: "ticks", "B \(i)") } }()
            try await a
            try await b

            for (index, collector) in collectors.enumerated() {
                let got = try await within(.seconds(30), "subscriber \(index)'s events") { try await collector.value }
                let fromA = got.filter { $0.hasPrefix("A ") }
                let fromB = got.filter { $0.hasPrefix("B ") }
                #expect(fromA == (0..<events).map { "A \($0)" }, "subscriber \(index): A's events, complete and in order")
                #expect(fromB == (0..<events).map { "B \($0)" }, "subscriber \(index): B's events, complete and in order")
            }
            try await other.publish(topic: "tocks", "own")
            var iterator = otherSubscription.makeAsyncIterator()
            #expect(try await iterator.next()?.text == "own", "nothing from \"ticks\" came before")
        }
    }

    @Test func unsubscribeStopsDelivery() async throws {
        try await TestRelay.run { relay in
            let subscriber = try await relay.connect()
            let witness = try await relay.connect()
            let publisher = try await relay.connect()
            let witnessEvents = try await witness.subscribe(topic: "news")
            try await witness.barrier()
            var witnessIterator = witnessEvents.makeAsyncIterator()

            let first = try await subscriber.subscribe(topic: "news")
            try await subscriber.barrier()
            var iterator = first.makeAsyncIterator()
            try await publisher.publish(topic: "news", "one")
            #expect(try await iterator.next()?.text == "one")
            #expect(try await witnessIterator.next()?.text == "one")

            first.unsubscribe()
            #expect(try await iterator.next() == nil, "the iteration ends after unsubscribe()")
            try await subscriber.barrier()

            try await publisher.publish(topic: "news", "two")
            #expect(try await witnessIterator.next()?.text == "two")
            try await subscriber.barrier()

            // Subscribing again works (the relay got UNSUBSCRIBE, or it would close the connection
            // for subscribing twice), and the new subscription starts with what follows.
            let second = try await subscriber.subscribe(topic: "news")
            try await subscriber.barrier()
            try await publisher.publish(topic: "news", "three")
            var secondIterator = second.makeAsyncIterator()
            #expect(try await secondIterator.next()?.text == "three")
            #expect(try await witnessIterator.next()?.text == "three")
        }
    }

    @Test func endingTheIterationUnsubscribes() async throws {
        try await TestRelay.run { relay in
            let subscriber = try await relay.connect()
            let publisher = try await relay.connect()
            let subscription = try await subscriber.subscribe(topic: "t")
            try await subscriber.barrier()
            try await publisher.publish(topic: "t", "a")
            for try await event in subscription {
                #expect(event.text == "a")
                break
            }
            // Breaking out unsubscribed: a new subscription is allowed locally and by the relay.
            try await eventually("the topic to be free again") {
                do {
                    let again = try await subscriber.subscribe(topic: "t")
                    try await subscriber.barrier()
                    try await publisher.publish(topic: "t", "b")
                    var iterator = again.makeAsyncIterator()
                    #expect(try await iterator.next()?.text == "b")
                    return true
                } catch SkeinError.Code.alreadySubscribed {
                    return false
                }
            }
        }
    }

    @Test func droppingAnUnusedSubscriptionUnsubscribes() async throws {
        // A subscription nobody iterates would otherwise fill up and stop the whole connection.
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.receiveBuffer = 4
            let connection = try await relay.connect(options: options)
            let publisher = try await relay.connect()
            _ = try await connection.subscribe(topic: "ignored")
            try await connection.barrier()
            for i in 0..<100 { try await publisher.publish(topic: "ignored", "\(i)") }
            try await publisher.barrier()
            // The connection still reads: a round trip works.
            try await within(.seconds(5), "a round trip") { try await connection.barrier() }
            // And the topic is free to subscribe to again.
            let again = try await connection.subscribe(topic: "ignored")
            try await connection.barrier()
            try await publisher.publish(topic: "ignored", "fresh")
            var iterator = again.makeAsyncIterator()
            #expect(try await iterator.next()?.text == "fresh")
        }
    }

    @Test func slowSubscriberWithASmallBufferGetsEverythingInOrder() async throws {
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.receiveBuffer = 8
            let subscriber = try await relay.connect(options: options)
            _ = try await relay.serve("ping") { $0.body }
            let publisher = try await relay.connect()
            let subscription = try await subscriber.subscribe(topic: "burst")
            try await subscriber.barrier()
            let events = 2_000
            let consumer = Task {
                var got: [String] = []
                for try await event in subscription {
                    got.append(event.text)
                    if got.count % 100 == 0 { try await Task.sleep(for: .milliseconds(5)) }
                    if got.count == events { break }
                }
                return got
            }
            for i in 0..<events { try await publisher.publish(topic: "burst", "\(i)") }
            let got = try await within(.seconds(20), "the slow subscriber") { try await consumer.value }
            #expect(got == (0..<events).map { "\($0)" })
            // Reading resumed: the subscriber's connection still does requests.
            #expect(try await within(.seconds(5), "a request") { try await subscriber.request(cluster: "ping", "p", timeout: .seconds(5)) }.text == "p")
        }
    }

    @Test func publisherWaitsForASubscriberThatDoesNotRead() async throws {
        // Memory stays bounded end to end: the subscriber's binding stops reading, the relay's
        // output to it fills and pauses the publisher, and `publish` then waits.
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.receiveBuffer = 4
            let subscriber = try await relay.connect(options: options)
            let publisher = try await relay.connect()
            let subscription = try await subscriber.subscribe(topic: "flood")
            try await subscriber.barrier()
            let eventSize = 64 << 10
            let events = 2_048  // 128 MiB if nothing held the publisher back
            let published = Shared(0)
            let flood = Task {
                for i in 0..<events {
                    var event = ByteBuffer(repeating: 0, count: eventSize)
                    event.setInteger(UInt32(i), at: 0)
                    try await publisher.publish(topic: "flood", event)
                    published.update { $0 += 1 }
                }
            }
            // Wait until the publisher stops making progress, then check how far it got.
            var last = -1
            await eventually("the publisher to be held back") {
                let now = published.value
                defer { last = now }
                if now == events { return true }
                if now == last, now > 0 {
                    try? await Task.sleep(for: .milliseconds(200))
                    return published.value == now
                }
                try? await Task.sleep(for: .milliseconds(50))
                return false
            }
            let heldAt = published.value
            #expect(heldAt < events, "publish waited instead of buffering everything")
            #expect(heldAt * eventSize < 80 << 20, "held back after \(heldAt * eventSize) bytes")

            // The subscriber catches up: everything arrives, in order, and the publisher finishes.
            var next = 0
            for try await event in subscription {
                #expect(event.getInteger(at: 0, as: UInt32.self) == UInt32(next))
                next += 1
                if next == events { break }
            }
            try await within(.seconds(10), "the publisher") { try await flood.value }
            #expect(next == events)
        }
    }

    @Test func publisherHeldBackCanBeCancelled() async throws {
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.receiveBuffer = 2
            let subscriber = try await relay.connect(options: options)
            let publisher = try await relay.connect()
            let subscription = try await subscriber.subscribe(topic: "jam")
            try await subscriber.barrier()
            let published = Shared(0)
            let flood = Task {
                while true {
                    try await publisher.publish(topic: "jam", ByteBuffer(repeating: 9, count: 64 << 10))
                    published.update { $0 += 1 }
                }
            }
            // Held back: no progress for a while.
            var last = -1
            await eventually("the publisher to be held back") {
                let now = published.value
                defer { last = now }
                guard now == last, now > 0 else {
                    try? await Task.sleep(for: .milliseconds(50))
                    return false
                }
                try? await Task.sleep(for: .milliseconds(200))
                return published.value == now
            }
            flood.cancel()
            let outcome = try await within(.seconds(2), "the cancelled publisher") { await error { try await flood.value } }
            #expect(outcome is CancellationError)
            _ = subscription
        }
    }

    @Test func slowBroadcastHandlerGetsEverythingInOrder() async throws {
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.receiveBuffer = 4
            let got = Shared<[Int]>([])
            _ = try await relay.serve(
                "slow", options: options, request: { $0.body },
                broadcast: { message in
                    let n = Int(message.text)!
                    if n % 50 == 0 { try? await Task.sleep(for: .milliseconds(10)) }
                    got.update { $0.append(n) }
                })
            let client = try await relay.connect()
            for i in 0..<1_000 { try await client.broadcast(cluster: "slow", "\(i)") }
            await eventually("every broadcast") { got.value.count == 1_000 }
            #expect(got.value == Array(0..<1_000))
            // The member still answers requests afterwards.
            #expect(try await client.request(cluster: "slow", "ok", timeout: .seconds(5)).text == "ok")
        }
    }

    @Test func iteratingASubscriptionAgainEndsAtOnceInsteadOfCrashing() async throws {
        try await TestRelay.run { relay in
            let connection = try await relay.connect()
            let subscription = try await connection.subscribe(topic: "t")
            try await connection.barrier()
            try await connection.publish(topic: "t", "one")
            for try await event in subscription {
                #expect(event.text == "one")
                break
            }
            var second = subscription.makeAsyncIterator()
            #expect(try await second.next() == nil, "the subscription is over once its iteration ended")
            try await connection.barrier()
        }
    }

    @Test func subscribingTwiceIsAnError() async throws {
        try await TestRelay.run { relay in
            let connection = try await relay.connect()
            let subscription = try await connection.subscribe(topic: "once")
            let second = await error { try await connection.subscribe(topic: "once") }
            #expect(second as? SkeinError == .alreadySubscribed(topic: "once"))
            // The connection is unharmed and the first subscription still works.
            try await connection.publish(topic: "once", "still here")
            var iterator = subscription.makeAsyncIterator()
            #expect(try await iterator.next()?.text == "still here")
            try await connection.barrier()
        }
    }
}
