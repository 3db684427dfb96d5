import NIOCore
import Skein
import Testing

/// `skein/2` wildcard subscriptions through the binding, against an in-process relay.
@Suite("Wildcard topics (skein/2)", .timeLimit(.minutes(1)))
struct WildcardTests {
    @Test func aPatternReceivesEveryMatchingTopicWithItsTopicAndInOrder() async throws {
        try await TestRelay.run { relay in
            let subscriber = try await relay.connect()
            #expect(subscriber.protocolVersion == "skein/2")
            let publisher = try await relay.connect()
            let star = try await subscriber.subscribe(topic: "orders.*.paid")
            let tail = try await subscriber.subscribe(topic: "orders.>")
            let literal = try await subscriber.subscribe(topic: "orders.eu.paid")
            try await subscriber.barrier()
            let count = 500
            for i in 0..<count {
                try await publisher.publish(topic: i % 2 == 0 ? "orders.eu.paid" : "orders.us.paid", "\(i)")
                try await publisher.publish(topic: "orders.eu.refunded", "r\(i)")  // tail only
                try await publisher.publish(topic: "orders.paid", "x\(i)")  // tail only: `*` is one token
                try await publisher.publish(topic: "invoices.eu.paid", "n\(i)")  // none
            }
            try await publisher.publish(topic: "orders.end.paid", "end")

            var starGot: [String] = []
            for try await event in star.events {
                if event.body.text == "end" { break }
                #expect(event.topic == (Int(event.body.text)! % 2 == 0 ? "orders.eu.paid" : "orders.us.paid"))
                starGot.append(event.body.text)
            }
            #expect(starGot == (0..<count).map { "\($0)" }, "every match, once, in publish order")

            var tailCount = 0
            for try await event in tail.events {
                if event.body.text == "end" { break }
                #expect(event.topic.hasPrefix("orders."))
                tailCount += 1
            }
            #expect(tailCount == 3 * count, "paid, refunded and orders.paid: \(tailCount)")

            // The literal subscription beside the patterns gets only its own topic.
            var literalGot = 0
            for try await event in literal.events {
                #expect(event.topic == "orders.eu.paid")
                literalGot += 1
                if literalGot == count / 2 { break }
            }
        }
    }

    @Test func aBadPatternEndsItsSubscriptionWithInvalidNameAndNothingElse() async throws {
        try await TestRelay.run { relay in
            let client = try await relay.connect()
            let good = try await client.subscribe(topic: "a.*")
            let bad = try await client.subscribe(topic: "a.>.b")
            let outcome = await error { for try await _ in bad {} }
            #expect((outcome as? SkeinError)?.code == .invalidName, "got \(String(describing: outcome))")
            try await client.publish(topic: "a.x", "still here")
            var iterator = good.makeAsyncIterator()
            #expect(try await iterator.next()?.text == "still here")
        }
    }

    @Test func publishingToAPatternIsRefusedAndNotCarried() async throws {
        try await TestRelay.run { relay in
            let refusals = Shared<[String]>([])
            var options = ConnectionOptions()
            options.onRefused = { refusal in refusals.update { $0.append("\(refusal.operation) \(refusal.name) \(refusal.error.code)") } }
            let publisher = try await relay.connect(options: options)
            let subscriber = try await relay.connect()
            let all = try await subscriber.subscribe(topic: ">")
            try await subscriber.barrier()
            try await publisher.publish(topic: "a.*", "wild")
            try await publisher.publish(topic: "a.b", "plain")
            var iterator = all.events.makeAsyncIterator()
            let first = try await iterator.next()
            #expect(first?.topic == "a.b" && first?.body.text == "plain")
            try await publisher.barrier()
            #expect(refusals.update { $0 } == ["publish a.* invalidName"])
        }
    }

    @Test func anIrisClientsTopicsStayLiteralAndStillReachPatterns() async throws {
        try await TestRelay.run { relay in
            var iris = ConnectionOptions()
            iris.protocolVersion = .irisDraft2
            let irisClient = try await relay.connect(options: iris)
            let irisStar = try await irisClient.subscribe(topic: "a.*")
            try await irisClient.barrier()
            let skein = try await relay.connect()
            let pattern = try await skein.subscribe(topic: "a.*")
            try await skein.barrier()
            // A skein/2 publish to a.b reaches the pattern only: the Iris `a.*` is a topic of that name.
            try await skein.publish(topic: "a.b", "to the pattern")
            // An Iris publish to the literal `a.*` reaches both.
            try await irisClient.publish(topic: "a.*", "literal")
            // Two publishers: no order between them.
            var patternEvents = pattern.events.makeAsyncIterator()
            var topics: Set<String> = []
            for _ in 0..<2 { if let event = try await patternEvents.next() { topics.insert(event.topic) } }
            #expect(topics == ["a.b", "a.*"])
            var irisEvents = irisStar.makeAsyncIterator()
            #expect(try await irisEvents.next()?.text == "literal")
        }
    }
}
