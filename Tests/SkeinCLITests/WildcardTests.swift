// skein/2 wildcard subscriptions end to end: three real relay processes on 127.0.0.1, the CLI
// and the binding.
import Foundation
import Skein
import SkeinCrypto
import Testing

extension MeshRelay {
    func waitSees(_ other: String, subscribedToPattern pattern: String, within limit: Duration = .seconds(10)) async throws {
        try await waitFor("\(name) to see \(other) subscribed to the pattern \(pattern)", within: limit) {
            let remote = try await self.members().first { $0["name"] as? String == other && $0["status"] as? String == "alive" }
            return (remote?["patterns"] as? [String])?.contains(pattern) == true
        }
    }
}

@Suite("Wildcard topics across relays (skein/2)", .timeLimit(.minutes(2)))
struct WildcardCLITests {
    @Test("patterns on two relays get every matching topic published on a third, once, in order, and nothing else")
    func acrossThreeRelays() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
            let c = try await scope.startMeshRelay("c", keyFile: key, seeds: [a])
            try await waitAllSee([a, b, c], "c", "alive")
            try await waitAllSee([a, b, c], "b", "alive")
            // On c, the CLI: `orders.*` with each event's topic.
            let cli = try scope.spawn(["subscribe", "orders.*", "--with-topic", "--count", "3"] + c.relayFlag, name: "subscribe")
            try await cli.waitForStderr("ready")
            // On b, the binding: `orders.>` and a literal beside it.
            let connection = try await Skein.connect(to: b.endpoint)
            let tail = try await connection.subscribe(topic: "orders.>")
            try await a.waitSees("c", subscribedToPattern: "orders.*")
            try await a.waitSees("b", subscribedToPattern: "orders.>")
            let publisher = try await Skein.connect(to: a.endpoint)
            let count = 300
            for i in 0..<count {
                try await publisher.publish(topic: ["orders.eu", "orders.us.paid", "invoices.eu"][i % 3], "\(i)")
            }
            try await publisher.publish(topic: "orders.end", "end")
            var got: [Subscription.Event] = []
            for try await event in tail.events {
                if String(buffer: event.body) == "end" { break }
                got.append(event)
            }
            let expected = (0..<count).filter { $0 % 3 != 2 }
            #expect(got.map({ String(buffer: $0.body) }) == expected.map { "\($0)" }, "every match, once, in publish order")
            #expect(got.allSatisfy { $0.topic == (Int(String(buffer: $0.body))! % 3 == 0 ? "orders.eu" : "orders.us.paid") })
            #expect(try await cli.waitForExit(within: .seconds(10)) == 0)
            #expect(cli.stdoutText == "orders.eu\t0\norders.eu\t3\norders.eu\t6\n")
            // A wildcard publish from the CLI is refused, with the reason, and exits non-zero.
            let wild = try await scope.run(["publish", "orders.*", "nope"] + a.relayFlag)
            #expect(wild.status != 0 && wild.stderr.contains("wildcard"), "\(wild.status) \(wild.stderr)")
            try await connection.close()
            try await publisher.close()
        }
    }
}
