// Every pattern across relays: real relay processes on 127.0.0.1, clients through the binding.
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Skein
import SkeinCrypto
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension MeshRelay {
    var endpoint: RelayEndpoint { .tcp(host: "127.0.0.1", port: clientPort) }

    /// Waits until this relay's view of `other` lists `cluster` with `members` members.
    func waitSees(_ other: String, serving cluster: String, members: Int = 1, within limit: Duration = .seconds(10)) async throws {
        try await waitFor("\(name) to see \(other) serving \(cluster) ×\(members)", within: limit) {
            // The alive one: a restarted relay's predecessor (same name, left) keeps its last metadata.
            let remote = try await self.members().first { $0["name"] as? String == other && $0["status"] as? String == "alive" }
            return (remote?["clusters"] as? [String: Any])?[cluster] as? Int == members
        }
    }

    func waitSees(_ other: String, subscribedTo topic: String, within limit: Duration = .seconds(10)) async throws {
        try await waitFor("\(name) to see \(other) subscribed to \(topic)", within: limit) {
            let remote = try await self.members().first { $0["name"] as? String == other && $0["status"] as? String == "alive" }
            return (remote?["topics"] as? [String])?.contains(topic) == true
        }
    }
}

/// A member of `cluster` that answers with its own name and counts what it got.
final class NamedMember: Sendable {
    let connection: SkeinConnection
    let name: String
    private let state: NIOLockedValueBox<(requests: Int, broadcasts: [String])>

    static func start(_ name: String, cluster: String, on relay: MeshRelay, delay: Duration = .zero) async throws -> NamedMember {
        let box = NIOLockedValueBox((requests: 0, broadcasts: [String]()))
        let connection = try await Skein.serve(
            cluster: cluster, to: relay.endpoint,
            request: { _ in
                box.withLockedValue { $0.requests += 1 }
                if delay > .zero { try await Task.sleep(for: delay) }
                return ByteBuffer(string: name)
            },
            broadcast: { message in box.withLockedValue { $0.broadcasts.append(String(buffer: message)) } })
        return NamedMember(connection: connection, name: name, state: box)
    }

    private init(connection: SkeinConnection, name: String, state: NIOLockedValueBox<(requests: Int, broadcasts: [String])>) {
        self.connection = connection
        self.name = name
        self.state = state
    }

    var requests: Int { state.withLockedValue { $0.requests } }
    var broadcasts: [String] { state.withLockedValue { $0.broadcasts } }
}

@Suite("Mesh: every pattern across relays", .serialized, .timeLimit(.minutes(3)))
struct MeshRoutingTests {
    /// Relays A, B, C; members of `echo` on B and C.
    func threeRelays(_ scope: Scope) async throws -> (a: MeshRelay, b: MeshRelay, c: MeshRelay) {
        let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
        let a = try await scope.startMeshRelay("a", keyFile: key)
        let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
        let c = try await scope.startMeshRelay("c", keyFile: key, seeds: [a])
        try await waitAllSee([a, b, c], "c", "alive")
        try await waitAllSee([a, b, c], "b", "alive")
        return (a, b, c)
    }

    @Test("requests from A spread over members on B and C; every one gets exactly one answer")
    func requestsSpread() async throws {
        try await withScope { scope in
            let (a, b, c) = try await threeRelays(scope)
            let onB = try await NamedMember.start("on-b", cluster: "echo", on: b)
            let onC = try await NamedMember.start("on-c", cluster: "echo", on: c)
            try await a.waitSees("b", serving: "echo")
            try await a.waitSees("c", serving: "echo")
            let client = try await Skein.connect(to: a.endpoint)
            let total = 400
            let answers = try await withThrowingTaskGroup(of: String.self) { group in
                for i in 0..<total {
                    group.addTask { String(buffer: try await client.request(cluster: "echo", "r\(i)", timeout: .seconds(10))) }
                }
                return try await group.reduce(into: [String]()) { $0.append($1) }
            }
            #expect(answers.count == total)
            let fromB = answers.filter { $0 == "on-b" }.count
            let fromC = answers.filter { $0 == "on-c" }.count
            #expect(fromB + fromC == total)
            // Docs/mesh.md: with equal members and concurrent load, each relay gets 30–70%.
            #expect(fromB >= total * 3 / 10 && fromC >= total * 3 / 10, "B \(fromB), C \(fromC)")
            #expect(onB.requests == fromB && onC.requests == fromC)
            try await client.close()
            try await onB.connection.close()
            try await onC.connection.close()
        }
    }

    @Test("a request for a cluster with members only on B waits at A until B serves it (v1.0-draft2)")
    func waitsForRemoteMember() async throws {
        try await withScope { scope in
            let (a, b, _) = try await threeRelays(scope)
            var iris = ConnectionOptions()
            iris.protocolVersion = .irisDraft2
            let client = try await Skein.connect(to: a.endpoint, options: iris)
            async let answer = client.request(cluster: "late", "hello", timeout: .seconds(10))
            try await Task.sleep(for: .milliseconds(200))
            let member = try await NamedMember.start("late-b", cluster: "late", on: b)
            #expect(String(buffer: try await answer) == "late-b")
            try await client.close()
            try await member.connection.close()
        }
    }

    @Test("broadcasts from A reach every member on every relay once, in order per sender")
    func broadcastEverywhere() async throws {
        try await withScope { scope in
            let (a, b, c) = try await threeRelays(scope)
            let members = [
                try await NamedMember.start("a1", cluster: "all", on: a),
                try await NamedMember.start("b1", cluster: "all", on: b),
                try await NamedMember.start("b2", cluster: "all", on: b),
                try await NamedMember.start("c1", cluster: "all", on: c),
            ]
            try await a.waitSees("b", serving: "all", members: 2)
            try await a.waitSees("c", serving: "all")
            let sender = try await Skein.connect(to: a.endpoint)
            let messages = (0..<200).map { "m\($0)" }
            for message in messages { try await sender.broadcast(cluster: "all", message) }
            try await waitFor("every member to get every broadcast") { members.allSatisfy { $0.broadcasts.count >= messages.count } }
            try await Task.sleep(for: .milliseconds(200))  // a duplicate would arrive by now
            for member in members { #expect(member.broadcasts == messages, "\(member.name)") }
            try await sender.close()
            for member in members { try await member.connection.close() }
        }
    }

    @Test("publishes from two publishers reach subscribers on every relay once, FIFO per publisher")
    func publishEverywhere() async throws {
        try await withScope { scope in
            let (a, b, c) = try await threeRelays(scope)
            var subscriptions: [(SkeinConnection, Subscription)] = []
            for relay in [a, b, c, c] {
                let connection = try await Skein.connect(to: relay.endpoint)
                subscriptions.append((connection, try await connection.subscribe(topic: "news")))
            }
            try await a.waitSees("b", subscribedTo: "news")
            try await a.waitSees("c", subscribedTo: "news")
            try await b.waitSees("a", subscribedTo: "news")
            let publisherA = try await Skein.connect(to: a.endpoint)
            let publisherB = try await Skein.connect(to: b.endpoint)
            let count = 300
            async let pa: Void = { for i in 0..<count { try await publisherA.publish(topic: "news", "A\(i)") } }()
            async let pb: Void = { for i in 0..<count { try await publisherB.publish(topic: "news", "B\(i)") } }()
            _ = try await (pa, pb)
            for (index, (_, subscription)) in subscriptions.enumerated() {
                var fromA: [String] = []
                var fromB: [String] = []
                for try await event in subscription {
                    let text = String(buffer: event)
                    if text.hasPrefix("A") { fromA.append(text) } else { fromB.append(text) }
                    if fromA.count + fromB.count == 2 * count { break }
                }
                #expect(fromA == (0..<count).map { "A\($0)" }, "subscriber \(index)")
                #expect(fromB == (0..<count).map { "B\($0)" }, "subscriber \(index)")
            }
            try await publisherA.close()
            try await publisherB.close()
            for (connection, _) in subscriptions { try await connection.close() }
        }
    }

    @Test("members join and leave while requests flow: every request gets exactly one answer")
    func churnWhileRequesting() async throws {
        try await withScope { scope in
            let (a, b, c) = try await threeRelays(scope)
            let stable = try await NamedMember.start("stable", cluster: "echo", on: b)
            try await a.waitSees("b", serving: "echo")
            let client = try await Skein.connect(to: a.endpoint)
            let outcomes = NIOLockedValueBox((ok: 0, timedOut: 0, other: [String]()))
            let churned = NIOLockedValueBox([NamedMember]())
            let total = 600
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    // Churn on C while requests flow.
                    for round in 0..<4 {
                        let member = try await NamedMember.start("churn\(round)", cluster: "echo", on: c)
                        churned.withLockedValue { $0.append(member) }
                        try await Task.sleep(for: .milliseconds(150))
                        try await member.connection.close()
                        try await Task.sleep(for: .milliseconds(50))
                    }
                }
                for i in 0..<total {
                    group.addTask {
                        do {
                            _ = try await client.request(cluster: "echo", "r\(i)", timeout: .seconds(3))
                            outcomes.withLockedValue { $0.ok += 1 }
                        } catch SkeinError.Code.timedOut, SkeinError.Code.memberLost {
                            outcomes.withLockedValue { $0.timedOut += 1 }
                        } catch {
                            outcomes.withLockedValue { $0.other.append("\(error)") }
                        }
                    }
                    if i % 20 == 0 { try await Task.sleep(for: .milliseconds(10)) }
                }
                try await group.waitForAll()
            }
            let result = outcomes.withLockedValue { $0 }
            // Exactly one answer each: the task group would hang on a missing one, and the
            // binding rejects a second answer for one request id as a protocol violation.
            #expect(result.ok + result.timedOut == total, "\(result.other.prefix(3))")
            #expect(result.other.isEmpty)
            // Only requests a closing member was handed may fail; every other is answered.
            let handedToChurn = churned.withLockedValue { $0.reduce(0) { $0 + $1.requests } }
            #expect(result.timedOut <= handedToChurn, "\(result.timedOut) failed, \(handedToChurn) were handed to leaving members")
            try await client.close()
            try await stable.connection.close()
        }
    }

    @Test("kill -9 of relay C during a request stream: one answer each, none late, then all via B")
    func killRelayDuringRequests() async throws {
        try await withScope { scope in
            let (a, b, c) = try await threeRelays(scope)
            let onB = try await NamedMember.start("on-b", cluster: "echo", on: b)
            let onC = try await NamedMember.start("on-c", cluster: "echo", on: c, delay: .milliseconds(20))
            try await a.waitSees("b", serving: "echo")
            try await a.waitSees("c", serving: "echo")
            let client = try await Skein.connect(to: a.endpoint)
            let timeout = Duration.seconds(2)
            let late = NIOLockedValueBox(0)
            let results = NIOLockedValueBox([(sent: ContinuousClock.Instant, answer: String)]())
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<300 {
                    if i == 100 { c.child.send(SIGKILL) }
                    group.addTask {
                        let sent = ContinuousClock.now
                        let answer: String
                        do {
                            answer = String(buffer: try await client.request(cluster: "echo", "r\(i)", timeout: timeout))
                        } catch SkeinError.Code.timedOut {
                            answer = "timeout"
                        } catch SkeinError.Code.memberLost {
                            answer = "lost"  // skein/1: forwarded to C when it died
                        }
                        // No answer after the deadline (a little slack for scheduling).
                        if ContinuousClock.now - sent > timeout + .milliseconds(500) { late.withLockedValue { $0 += 1 } }
                        results.withLockedValue { $0.append((sent, answer)) }
                    }
                    try await Task.sleep(for: .milliseconds(10))
                }
                try await group.waitForAll()
            }
            let all = results.withLockedValue { $0 }
            #expect(all.count == 300)
            #expect(late.withLockedValue { $0 } == 0)
            #expect(Set(all.map(\.answer)).isSubset(of: ["on-b", "on-c", "timeout", "lost"]))
            // After C is known dead, every request succeeds via B.
            try await waitAllSee([a], "c", "dead")
            for i in 0..<50 {
                #expect(String(buffer: try await client.request(cluster: "echo", "after\(i)", timeout: timeout)) == "on-b")
            }
            _ = onC
            try await client.close()
            try await onB.connection.close()
        }
    }

    @Test("a restarted relay rejoins and serves again, without touching the others")
    func restartRelay() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
            try await waitAllSee([a, b], "b", "alive")
            var member = try await NamedMember.start("first", cluster: "echo", on: b)
            try await a.waitSees("b", serving: "echo")
            let client = try await Skein.connect(to: a.endpoint)
            #expect(String(buffer: try await client.request(cluster: "echo", "x", timeout: .seconds(5))) == "first")
            b.child.send(SIGTERM)
            _ = try await b.child.waitForExit()
            try await waitAllSee([a], "b", "left")
            // The same name and address, a new process (and so a new node id).
            let b2 = try await scope.startMeshRelay("b", keyFile: key, seeds: [a], bindPort: b.meshPort)
            try await waitAllSee([a, b2], "b", "alive")
            member = try await NamedMember.start("second", cluster: "echo", on: b2)
            try await a.waitSees("b", serving: "echo")
            #expect(String(buffer: try await client.request(cluster: "echo", "y", timeout: .seconds(5))) == "second")
            try await client.close()
            try await member.connection.close()
        }
    }

    @Test("a relay stopping gracefully answers the requests it holds, then others route around it")
    func gracefulStopDrains() async throws {
        try await withScope { scope in
            let (a, b, c) = try await threeRelays(scope)
            let slow = try await NamedMember.start("slow-b", cluster: "echo", on: b, delay: .milliseconds(600))
            try await a.waitSees("b", serving: "echo")
            let client = try await Skein.connect(to: a.endpoint)
            async let held = client.request(cluster: "echo", "in flight", timeout: .seconds(5))
            try await Task.sleep(for: .milliseconds(150))
            b.child.send(SIGTERM)
            // B leaves at once, yet the request its member holds is answered, not timed out.
            #expect(String(buffer: try await held) == "slow-b")
            #expect(try await b.child.waitForExit() == 0)
            try await waitAllSee([a, c], "b", "left")
            let onC = try await NamedMember.start("on-c", cluster: "echo", on: c)
            try await a.waitSees("c", serving: "echo")
            #expect(String(buffer: try await client.request(cluster: "echo", "next", timeout: .seconds(5))) == "on-c")
            _ = slow
            try await client.close()
            try await onC.connection.close()
        }
    }

    @Test("a tunnel from A to a member on B carries messages both ways, in order, then closes")
    func tunnelAcrossRelays() async throws {
        try await withScope { scope in
            let (a, b, _) = try await threeRelays(scope)
            let member = try await Skein.serve(
                cluster: "upper", to: b.endpoint,
                request: { $0.body },
                tunnel: { tunnel in
                    // Echo every message upper-cased, until the initiator closes.
                    while let message = try? await tunnel.receive() {
                        try? await tunnel.send(String(buffer: message).uppercased())
                    }
                    try? await tunnel.close()
                })
            try await a.waitSees("b", serving: "upper")
            let client = try await Skein.connect(to: a.endpoint)
            let tunnel = try await client.tunnel(cluster: "upper", timeout: .seconds(5))
            for i in 0..<100 {
                try await tunnel.send("message \(i)")
                let answer = try #require(try await tunnel.receive())
                #expect(String(buffer: answer) == "MESSAGE \(i)")
            }
            try await tunnel.close()
            try await client.close()
            try await member.close()
        }
    }

    @Test("1 GiB through a tunnel across relays with a slow reader: complete, in order, relay memory bounded")
    func bulkTunnelAcrossRelays() async throws {
        try await withScope { scope in
            let (a, b, _) = try await threeRelays(scope)
            let total = Int(ProcessInfo.processInfo.environment["SKEIN_TUNNEL_BYTES"] ?? "") ?? 1 << 30
            let messageSize = 1 << 20
            let started = ContinuousClock.now
            let received = NIOLockedValueBox((bytes: 0, ok: true))
            let member = try await Skein.serve(
                cluster: "sink", to: b.endpoint,
                request: { $0.body },
                tunnel: { tunnel in
                    var expected: UInt8 = 0
                    var count = 0
                    while let message = try? await tunnel.receive() {
                        // Every message is filled with its index mod 256: order and content (sampled
                        // every 4 KiB and at both ends; a byte-by-byte check dominates a debug build).
                        let view = message.readableBytesView
                        let ok = message.readableBytes == messageSize
                            && stride(from: view.startIndex, to: view.endIndex, by: 4096).allSatisfy { view[$0] == expected }
                            && view.last == expected
                        received.withLockedValue { $0.bytes += message.readableBytes; $0.ok = $0.ok && ok }
                        expected &+= 1
                        count += 1
                        if count % 64 == 0 { try? await Task.sleep(for: .milliseconds(20)) }  // a slow reader
                    }
                })
            try await a.waitSees("b", serving: "sink")
            let client = try await Skein.connect(to: a.endpoint)
            let tunnel = try await client.tunnel(cluster: "sink", timeout: .seconds(5))
            var peakRSS: [String: Int] = [:]
            for i in 0..<(total / messageSize) {
                try await tunnel.send(ByteBuffer(repeating: UInt8(truncatingIfNeeded: i), count: messageSize))
                if i % 64 == 0 {
                    for relay in [a, b] { peakRSS[relay.name] = max(peakRSS[relay.name] ?? 0, rssKiB(pid: relay.child.pid)) }
                }
            }
            try await tunnel.close()
            try await waitFor("the member to receive everything", within: .seconds(120)) { received.withLockedValue { $0.bytes } == total }
            print("tunnel across relays: \(total >> 20) MiB in \(ContinuousClock.now - started), peak RSS \(peakRSS.mapValues { $0 / 1024 }) MiB")
            #expect(received.withLockedValue { $0.ok })
            // Each relay buffers at most its tunnel buffer (4 MiB) per direction; allow for the
            // process itself and allocator slack, far below the 1 GiB that went through.
            for (name, rss) in peakRSS { #expect(rss < 200 * 1024, "relay \(name) peaked at \(rss / 1024) MiB") }
            try await client.close()
            try await member.close()
        }
    }

    @Test("a tunnel whose far relay dies fails at the initiator with a reason")
    func tunnelFarRelayDies() async throws {
        try await withScope { scope in
            let (a, _, c) = try await threeRelays(scope)
            let member = try await Skein.serve(cluster: "far", to: c.endpoint, request: { $0.body }, tunnel: { tunnel in
                while (try? await tunnel.receive()) != nil {}
            })
            try await a.waitSees("c", serving: "far")
            let client = try await Skein.connect(to: a.endpoint)
            let tunnel = try await client.tunnel(cluster: "far", timeout: .seconds(5))
            try await tunnel.send("hello")
            c.child.send(SIGKILL)
            let failed = NIOLockedValueBox<String?>(nil)
            let started = ContinuousClock.now
            do {
                while try await tunnel.receive() != nil {}
                failed.withLockedValue { $0 = "closed gracefully" }
            } catch {
                failed.withLockedValue { $0 = "\(error)" }
            }
            #expect(ContinuousClock.now - started < .seconds(10))
            #expect(failed.withLockedValue { $0 }?.contains("lost") == true, "\(failed.withLockedValue { $0 } ?? "")")
            _ = member
            try await client.close()
        }
    }
}

/// Resident set size of a process, in KiB.
func rssKiB(pid: Int32) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
        let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
    else { return 0 }
    return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
}
