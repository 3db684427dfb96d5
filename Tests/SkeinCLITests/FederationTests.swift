// Two Skein networks, each in a network namespace of its own with its own subnet and key, joined
// only by one veth link, with gateways federating them (Docs/federation.md). Needs root (CI runs
// as root); without it, or without `ip`, the tests fail and say why: they never skip.

import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Skein
import SkeinCrypto
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Network namespaces and a veth pair this test run creates, and removes however it ends.
enum NetworkNamespaces {
    static func ipTool() throws -> String {
        for path in ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        throw HarnessError("the federation tests need `ip` (Debian's iproute2) to create network namespaces; it was not found")
    }

    /// Runs `ip ARGS…` and fails loudly, with what it printed, if it does not succeed.
    static func ip(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try ipTool())
        process.arguments = arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw HarnessError(
                "`ip \(arguments.joined(separator: " "))` failed (status \(process.terminationStatus)): \(text)"
                    + (geteuid() == 0 ? "" : " — network namespaces need root; CI runs as root"))
        }
    }
}

/// A relay of one of the two networks.
struct NetRelay {
    let child: Child
    let name: String
    let namespace: String
    let adminPort: Int
    let socket: String
    let meshAddress: String
    var endpoint: RelayEndpoint { .unixSocket(path: socket) }
}

/// eu (10.77.1.0/24) and us (10.77.2.0/24), joined by veth 10.77.0.1 ↔ 10.77.0.2. In each: two
/// gateways (.1, .2) and a plain relay (.3). us exports `db` (request, tunnel), `workers`
/// (broadcast), `news.*` (subscribe) and `orders` (publish) to eu; eu exports nothing.
final class TwoNetworks: @unchecked Sendable {
    // @unchecked: `relays` is written before any concurrent use.
    let scope: Scope
    let eu: String
    let us: String
    let vethEU: String
    let vethUS: String
    private(set) var relays: [String: NetRelay] = [:]
    private var created: [String] = []
    private var keyPaths: [String: String] = [:]

    static let usExports = ["request,tunnel:db", "broadcast:workers", "subscribe:news.*", "publish:orders"]

    init(scope: Scope) {
        self.scope = scope
        let tag = "\(getpid() % 100_000)\(Int.random(in: 0..<100))"
        eu = "skeu\(tag)"
        us = "skus\(tag)"
        vethEU = "vf\(tag)e"
        vethUS = "vf\(tag)u"
    }

    subscript(name: String) -> NetRelay { relays[name]! }

    func setUp() async throws {
        for ns in [eu, us] {
            try NetworkNamespaces.ip(["netns", "add", ns])
            created.append(ns)
            try NetworkNamespaces.ip(["-n", ns, "link", "set", "lo", "up"])
        }
        for i in 1...3 {
            try NetworkNamespaces.ip(["-n", eu, "addr", "add", "10.77.1.\(i)/32", "dev", "lo"])
            try NetworkNamespaces.ip(["-n", us, "addr", "add", "10.77.2.\(i)/32", "dev", "lo"])
        }
        try NetworkNamespaces.ip(["link", "add", vethEU, "type", "veth", "peer", "name", vethUS])
        try NetworkNamespaces.ip(["link", "set", vethEU, "netns", eu])
        try NetworkNamespaces.ip(["link", "set", vethUS, "netns", us])
        try NetworkNamespaces.ip(["-n", eu, "addr", "add", "10.77.0.1/30", "dev", vethEU])
        try NetworkNamespaces.ip(["-n", us, "addr", "add", "10.77.0.2/30", "dev", vethUS])
        try NetworkNamespaces.ip(["-n", eu, "link", "set", vethEU, "up"])
        try NetworkNamespaces.ip(["-n", us, "link", "set", vethUS, "up"])
        try NetworkNamespaces.ip(["-n", eu, "route", "add", "10.77.2.0/24", "via", "10.77.0.2"])
        try NetworkNamespaces.ip(["-n", us, "route", "add", "10.77.1.0/24", "via", "10.77.0.1"])

        for key in ["eu", "us", "fed"] {
            let path = scope.path("\(key).key").path
            guard try await scope.run(["keygen", "-o", path]).status == 0 else { throw HarnessError("keygen failed") }
            keyPaths[key] = path
        }
        let usGateways = ["10.77.2.1:7001", "10.77.2.2:7001"]
        let euGateways = ["10.77.1.1:7001", "10.77.1.2:7001"]
        for i in 1...2 {
            try await start("e\(i)", network: "eu", namespace: eu, host: "10.77.1.\(i)", seed: i == 1 ? nil : "10.77.1.1:7000",
                gateway: (listen: "10.77.1.\(i):7001", remote: "us", gateways: usGateways, exports: []))
            try await start("u\(i)", network: "us", namespace: us, host: "10.77.2.\(i)", seed: i == 1 ? nil : "10.77.2.1:7000",
                gateway: (listen: "10.77.2.\(i):7001", remote: "eu", gateways: euGateways, exports: Self.usExports))
        }
        try await start("e3", network: "eu", namespace: eu, host: "10.77.1.3", seed: "10.77.1.1:7000", gateway: nil)
        try await start("u3", network: "us", namespace: us, host: "10.77.2.3", seed: "10.77.2.1:7000", gateway: nil)
        // Ready: the plain relays see both of their network's gateways alive and linked to the other.
        try await waitForGateways("e3", to: "us", count: 2)
        try await waitForGateways("u3", to: "eu", count: 2)
    }

    func start(
        _ name: String, network: String, namespace: String, host: String, port: Int = 7000, seed: String?,
        gateway: (listen: String, remote: String, gateways: [String], exports: [String])?, key: String? = nil
    ) async throws {
        let socket = scope.path("\(name).sock").path
        let adminPort = 7200 + relays.count + 1
        var arguments = [
            "relay", "--network", network, "--key-file", keyPaths[key ?? network]!, "--name", name,
            "--bind", "\(host):\(port)", "--client-port", "0", "--client-host", "127.0.0.1", "--client-socket", socket,
            "--admin-port", "\(adminPort)", "--gossip-profile", "fast",
        ]
        if let seed { arguments += ["--seed", seed] }
        if let gateway {
            arguments += ["--federation", gateway.remote, "--federation-listen", gateway.listen, "--federation-key-file", keyPaths["fed"]!]
            arguments += gateway.gateways.flatMap { ["--federation-gateway", $0] }
            arguments += gateway.exports.flatMap { ["--export", $0] }
        }
        let child = try scope.spawn(arguments, name: name, namespace: namespace)
        try await child.waitForStderr("relay ready", within: .seconds(20))
        relays[name] = NetRelay(child: child, name: name, namespace: namespace, adminPort: adminPort, socket: socket, meshAddress: "\(host):\(port)")
    }

    /// `/members` of a relay, fetched inside its namespace.
    func members(_ name: String) async throws -> [[String: Any]] {
        let relay = self[name]
        let outcome = try await scope.run(["members", "--json", "--admin", "127.0.0.1:\(relay.adminPort)"], namespace: relay.namespace)
        guard outcome.status == 0, let object = try JSONSerialization.jsonObject(with: outcome.stdout) as? [String: Any],
            let members = object["members"] as? [[String: Any]]
        else { throw HarnessError("members of \(name): status \(outcome.status): \(outcome.stderr)") }
        return members
    }

    /// `/status` of a relay.
    func status(_ name: String) async throws -> [String: Any] {
        let relay = self[name]
        let outcome = try await scope.run(["status", "--json", "--admin", "127.0.0.1:\(relay.adminPort)"], namespace: relay.namespace)
        guard outcome.status == 0, let object = try JSONSerialization.jsonObject(with: outcome.stdout) as? [String: Any] else {
            throw HarnessError("status of \(name): status \(outcome.status): \(outcome.stderr)")
        }
        return object
    }

    /// Waits until `observer` sees `count` alive relays that are gateways to `network`.
    func waitForGateways(_ observer: String, to network: String, count: Int, within limit: Duration = .seconds(30)) async throws {
        try await waitFor("\(observer) to see \(count) gateways to \(network)", within: limit) {
            let gateways = try await self.members(observer).filter {
                $0["status"] as? String == "alive" && ($0["gateways"] as? [String: Any])?[network] != nil
            }
            return gateways.count == count
        }
    }

    func link(up: Bool) throws {
        try NetworkNamespaces.ip(["-n", eu, "link", "set", vethEU, up ? "up" : "down"])
        try NetworkNamespaces.ip(["-n", us, "link", "set", vethUS, up ? "up" : "down"])
        if up {
            // Bringing a link up drops the routes through it: put them back.
            try? NetworkNamespaces.ip(["-n", eu, "route", "replace", "10.77.2.0/24", "via", "10.77.0.2"])
            try? NetworkNamespaces.ip(["-n", us, "route", "replace", "10.77.1.0/24", "via", "10.77.0.1"])
        }
    }

    /// Removes the namespaces (and with them the veth pair). Processes are the scope's.
    func tearDown() {
        for ns in created { try? NetworkNamespaces.ip(["netns", "del", ns]) }
        created = []
    }
}

/// Runs `body` with both networks up; kills every process and removes the namespaces after.
func withTwoNetworks(_ body: (TwoNetworks) async throws -> Void) async throws {
    try await withScope { scope in
        let networks = TwoNetworks(scope: scope)
        defer {
            scope.cleanUp()
            networks.tearDown()
        }
        try await networks.setUp()
        try await body(networks)
    }
}

/// Connects to a relay over its Unix socket (reachable across namespaces) with `skein/1`.
func connect(_ relay: NetRelay, refusals: NIOLockedValueBox<[Refusal]>? = nil) async throws -> SkeinConnection {
    var options = ConnectionOptions()
    options.protocolVersion = .skein1
    if let refusals { options.onRefused = { refusal in refusals.withLockedValue { $0.append(refusal) } } }
    return try await Skein.connect(to: relay.endpoint, options: options)
}

/// Runs `body`, failing if it takes longer than `limit`.
func within<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        guard let first = try await group.next(), let value = first else {
            group.cancelAll()
            throw HarnessError("timed out after \(limit)")
        }
        group.cancelAll()
        return value
    }
}

/// The error `body` throws, or nil.
func caught(_ body: () async throws -> Void) async -> (any Error)? {
    do {
        try await body()
        return nil
    } catch {
        return error
    }
}

/// Collects a subscription's events as text, until the subscription ends.
func collect(_ subscription: Subscription) -> (NIOLockedValueBox<[String]>, Task<Void, any Error>) {
    let box = NIOLockedValueBox([String]())
    let task = Task {
        for try await event in subscription { box.withLockedValue { $0.append(String(buffer: event)) } }
    }
    return (box, task)
}

/// Retries `request` until it succeeds (routes take a moment to form), then returns its answer.
func firstAnswer(_ client: SkeinConnection, _ cluster: String, within limit: Duration = .seconds(20)) async throws -> String {
    let deadline = ContinuousClock.now + limit
    var last: (any Error)?
    while ContinuousClock.now < deadline {
        do {
            return String(buffer: try await client.request(cluster: cluster, "probe", timeout: .seconds(2)))
        } catch {
            last = error
            try await Task.sleep(for: .milliseconds(100))
        }
    }
    throw HarnessError("no answer from \(cluster) within \(limit): \(String(describing: last))")
}

@Suite("Federation: two networks in network namespaces", .serialized, .timeLimit(.minutes(5)))
struct FederationTests {
    @Test("a client in eu requests, broadcasts to, tunnels into and subscribes across to us; unexported names are refused distinctly")
    func everyPatternCrosses() async throws {
        try await withTwoNetworks { net in
            // us: db on u3 (answers with its name), workers on u3 and u1, a subscriber of orders on u2.
            let db = try await Skein.serve(cluster: "db", to: net["u3"].endpoint, request: { request in
                ByteBuffer(string: "db@u3: " + String(buffer: request.body))
            }, tunnel: { tunnel in
                while let message = try? await tunnel.receive() { try? await tunnel.send(String(buffer: message).uppercased()) }
                try? await tunnel.close()
            })
            let heard = NIOLockedValueBox([String: [String]]())
            var workers: [SkeinConnection] = []
            for relay in ["u3", "u1"] {
                workers.append(try await Skein.serve(cluster: "workers", to: net[relay].endpoint, request: { $0.body }, broadcast: { message in
                    heard.withLockedValue { $0[relay, default: []].append(String(buffer: message)) }
                }))
            }
            let orderSubscriber = try await connect(net["u2"])
            let orders = try await orderSubscriber.subscribe(topic: "orders")

            let refusals = NIOLockedValueBox([Refusal]())
            let client = try await connect(net["e3"], refusals: refusals)
            #expect(try await firstAnswer(client, "db@us") == "db@u3: probe")
            for i in 0..<50 {
                #expect(String(buffer: try await client.request(cluster: "db@us", "\(i)", timeout: .seconds(5))) == "db@u3: \(i)")
            }

            // A survey of db@us (skein/2): every member of db in us (one, on u3), and us's tally.
            let surveyor = try await Skein.connect(to: net["e3"].endpoint)
            let survey = try await surveyor.survey(cluster: "db@us", "count", timeout: .seconds(5))
            var surveyed: [String] = []
            for try await answer in survey { surveyed.append(answer.body.map { String(buffer: $0) } ?? "fault") }
            #expect(surveyed == ["db@u3: count"] && survey.tally == Survey.Tally(asked: 1, answered: 1, faulted: 0, lost: 0))
            // workers is exported for broadcasts only: a survey is a request, refused distinctly.
            let refusedSurvey = try await surveyor.survey(cluster: "workers@us", "x", timeout: .seconds(5))
            let notExported = await caught { for try await _ in refusedSurvey {} }
            #expect((notExported as? SkeinError)?.code == .notExported, "\(String(describing: notExported))")
            try await surveyor.close()

            // A tunnel, both ways, in order.
            let tunnel = try await client.tunnel(cluster: "db@us", timeout: .seconds(5))
            for i in 0..<20 {
                try await tunnel.send("message \(i)")
                #expect(try await tunnel.receive().map { String(buffer: $0) } == "MESSAGE \(i)")
            }
            try await tunnel.close()

            // Broadcasts: every member in us once, in order.
            try await waitFor("both workers to hear a probe broadcast", within: .seconds(20)) {
                try await client.broadcast(cluster: "workers@us", "probe")
                try await Task.sleep(for: .milliseconds(200))
                return heard.withLockedValue { $0["u3"]?.contains("probe") == true && $0["u1"]?.contains("probe") == true }
            }
            heard.withLockedValue { $0 = [:] }
            for i in 0..<30 { try await client.broadcast(cluster: "workers@us", "b\(i)") }
            try await waitFor("30 broadcasts at each worker") { heard.withLockedValue { $0["u3"]?.count == 30 && $0["u1"]?.count == 30 } }
            #expect(heard.withLockedValue { $0 } == ["u3": (0..<30).map { "b\($0)" }, "u1": (0..<30).map { "b\($0)" }])

            // Subscribing in eu to a us topic: us's publishers reach the eu subscriber, once, in order.
            let (news, newsReader) = collect(try await client.subscribe(topic: "news.eu@us"))
            let usPublisher = try await connect(net["u3"])
            try await waitFor("the subscription to cross", within: .seconds(20)) {
                try await usPublisher.publish(topic: "news.eu", "probe")
                try await Task.sleep(for: .milliseconds(200))
                return news.withLockedValue { $0.contains("probe") }
            }
            try await usPublisher.publish(topic: "news.eu", "marker")
            try await waitFor("the marker") { news.withLockedValue { $0.contains("marker") } }
            for i in 0..<100 { try await usPublisher.publish(topic: "news.eu", "n\(i)") }
            try await waitFor("100 events") { news.withLockedValue { $0.filter { $0.hasPrefix("n") }.count >= 100 } }
            try await Task.sleep(for: .milliseconds(300))  // a duplicate would arrive by now
            let events = news.withLockedValue { $0 }
            #expect(Array(events.drop { $0 != "marker" }.dropFirst()) == (0..<100).map { "n\($0)" }, "once each, in order")
            newsReader.cancel()

            // Publishing from eu into a us topic us exports for publishing.
            let (orderEvents, ordersReader) = collect(orders)
            try await waitFor("an order to cross", within: .seconds(20)) {
                try await client.publish(topic: "orders@us", "o-probe")
                try await Task.sleep(for: .milliseconds(200))
                return orderEvents.withLockedValue { !$0.isEmpty }
            }
            ordersReader.cancel()

            // Unexported: distinct errors, at once.
            let request = await caught { _ = try await client.request(cluster: "cache@us", "x", timeout: .seconds(30)) }
            guard (request as? SkeinError)?.code == .notExported else { Issue.record("request: \(String(describing: request))"); return }
            let tunnelRefused = await caught { _ = try await client.tunnel(cluster: "workers@us", timeout: .seconds(30)) }
            guard (tunnelRefused as? SkeinError)?.code == .notExported else { Issue.record("tunnel: \(String(describing: tunnelRefused))"); return }
            let secret = try await client.subscribe(topic: "secret@us")
            let ended = try await within(.seconds(10)) { await caught { for try await _ in secret {} } }
            guard (ended as? SkeinError)?.code == .notExported else { Issue.record("subscribe: \(String(describing: ended))"); return }
            try await client.publish(topic: "news.eu@us", "not exported for publishing")
            try await waitFor("the refused publish to be reported") {
                refusals.withLockedValue { $0.contains { $0.operation == .publish && $0.name == "news.eu@us" } }
            }
            let unknown = await caught { _ = try await client.request(cluster: "db@mars", "x", timeout: .seconds(30)) }
            guard (unknown as? SkeinError)?.code == .networkUnreachable else { Issue.record("mars: \(String(describing: unknown))"); return }

            // The us gateways logged the attempts that reached them (the subscription's interest
            // is filtered in eu already; a request refused in eu never left it).
            let usStatus = try await net.status("u1")
            #expect((usStatus["federation"] as? [[String: Any]])?.first?["reachable"] as? Bool == true)
            try await client.close()
            try await db.close()
            for worker in workers { try await worker.close() }
        }
    }

    @Test("192 MiB through a tunnel from eu into us with a slow reader: complete, in order, every relay on the path bounded")
    func bulkTunnelAcrossTheFederation() async throws {
        try await withTwoNetworks { net in
            let total = 192 << 20
            let messageSize = 1 << 20
            let received = NIOLockedValueBox((bytes: 0, ok: true))
            let member = try await Skein.serve(cluster: "db", to: net["u3"].endpoint, request: { $0.body }, tunnel: { tunnel in
                var expected: UInt8 = 0
                var count = 0
                while let message = try? await tunnel.receive() {
                    let view = message.readableBytesView
                    let ok = message.readableBytes == messageSize
                        && stride(from: view.startIndex, to: view.endIndex, by: 4096).allSatisfy { view[$0] == expected } && view.last == expected
                    received.withLockedValue { $0.bytes += message.readableBytes; $0.ok = $0.ok && ok }
                    expected &+= 1
                    count += 1
                    if count % 16 == 0 { try? await Task.sleep(for: .milliseconds(10)) }  // a slow reader
                }
            })
            let client = try await connect(net["e3"])
            _ = try await firstAnswer(client, "db@us")
            let tunnel = try await client.tunnel(cluster: "db@us", timeout: .seconds(5))
            let path = ["e3", "e1", "e2", "u1", "u2", "u3"]
            var peak: [String: Int] = [:]
            for i in 0..<(total / messageSize) {
                try await tunnel.send(ByteBuffer(repeating: UInt8(truncatingIfNeeded: i), count: messageSize))
                if i % 16 == 0 { for name in path { peak[name] = max(peak[name] ?? 0, rssKiB(pid: net[name].child.pid)) } }
            }
            try await tunnel.close()
            try await waitFor("the member to receive everything", within: .seconds(120)) { received.withLockedValue { $0.bytes } == total }
            #expect(received.withLockedValue { $0.ok }, "in order and intact")
            // Flow control is hop by hop with each hop's 4 MiB tunnel buffer, so end to end: no relay
            // on the path holds more than a few buffers, far below the 192 MiB that went through.
            for (name, rss) in peak { #expect(rss < 120 * 1024, "relay \(name) peaked at \(rss / 1024) MiB") }
            try await client.close()
            try await member.close()
        }
    }

    @Test("relays of eu cannot join us's membership, nor us's eu's: another key is refused, and says so")
    func keysSeparateNetworks() async throws {
        try await withTwoNetworks { net in
            // A relay in eu's namespace holding eu's key, seeded at us's plain relay; and the reverse.
            try await net.start("spy-eu", network: "us", namespace: net.eu, host: "10.77.1.3", port: 7010, seed: net["u3"].meshAddress, gateway: nil, key: "eu")
            try await net.start("spy-us", network: "eu", namespace: net.us, host: "10.77.2.3", port: 7010, seed: net["e3"].meshAddress, gateway: nil, key: "us")
            try await net["u3"].child.waitForStderr("peer handshake rejected", within: .seconds(20))
            try await net["e3"].child.waitForStderr("peer handshake rejected", within: .seconds(20))
            // Give gossip every chance: membership never lists the spies, nor do the spies list them.
            try await Task.sleep(for: .seconds(2))
            for (observer, spy) in [("u3", "spy-eu"), ("u1", "spy-eu"), ("e3", "spy-us"), ("e1", "spy-us")] {
                #expect(try await net.members(observer).allSatisfy { $0["name"] as? String != spy }, "\(observer) lists \(spy)")
            }
            #expect(try await net.members("spy-eu").allSatisfy { ($0["self"] as? Bool) == true })
            #expect(try await net.members("spy-us").allSatisfy { ($0["self"] as? Bool) == true })
        }
    }

    @Test("kill -9 of a us gateway while requests flow: exactly one answer each, none late, then all through the other")
    func gatewayKilled() async throws {
        try await withTwoNetworks { net in
            let db = try await Skein.serve(cluster: "db", to: net["u3"].endpoint, request: { request in
                try await Task.sleep(for: .milliseconds(5))
                return request.body
            })
            let client = try await connect(net["e3"])
            _ = try await firstAnswer(client, "db@us")
            let timeout = Duration.seconds(2)
            let outcomes = NIOLockedValueBox((ok: 0, lost: 0, late: 0, other: [String]()))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<300 {
                    if i == 100 { net["u1"].child.send(SIGKILL) }
                    group.addTask {
                        let sent = ContinuousClock.now
                        do {
                            let answer = try await client.request(cluster: "db@us", "r\(i)", timeout: timeout)
                            outcomes.withLockedValue { $0.ok += String(buffer: answer) == "r\(i)" ? 1 : 0 }
                        } catch SkeinError.Code.memberLost, SkeinError.Code.timedOut {
                            outcomes.withLockedValue { $0.lost += 1 }  // in flight through u1 when it died
                        } catch {
                            outcomes.withLockedValue { $0.other.append("\(error)") }
                        }
                        if ContinuousClock.now - sent > timeout + .milliseconds(500) { outcomes.withLockedValue { $0.late += 1 } }
                    }
                    try await Task.sleep(for: .milliseconds(10))
                }
                try await group.waitForAll()
            }
            let result = outcomes.withLockedValue { $0 }
            #expect(result.ok + result.lost == 300, "\(result.other.prefix(3))")
            #expect(result.other.isEmpty)
            #expect(result.late == 0)
            #expect(result.lost <= 60, "only what was in flight through u1: \(result.lost)")
            // Every request now goes through u2.
            for i in 0..<50 {
                #expect(String(buffer: try await client.request(cluster: "db@us", "after\(i)", timeout: timeout)) == "after\(i)")
            }
            try await client.close()
            try await db.close()
        }
    }

    @Test("the link between the networks goes down and comes back: network unreachable meanwhile, then it works again, no restarts")
    func partitionHeals() async throws {
        try await withTwoNetworks { net in
            let db = try await Skein.serve(cluster: "db", to: net["u3"].endpoint, request: { $0.body })
            let client = try await connect(net["e3"])
            _ = try await firstAnswer(client, "db@us")

            try net.link(up: false)
            // Gateway links break within 3 s of silence; then eu's relays know us is unreachable.
            try await waitFor("requests to fail with network unreachable", within: .seconds(20)) {
                let outcome = await caught { _ = try await client.request(cluster: "db@us", "x", timeout: .seconds(1)) }
                if (outcome as? SkeinError)?.code == .networkUnreachable { return true }
                return false
            }
            // Fast, not at the deadline.
            for _ in 0..<5 {
                let start = ContinuousClock.now
                let outcome = await caught { _ = try await client.request(cluster: "db@us", "x", timeout: .seconds(30)) }
                guard (outcome as? SkeinError)?.code == .networkUnreachable else { Issue.record("\(String(describing: outcome))"); return }
                #expect(ContinuousClock.now - start < .seconds(5))
            }
            let eStatus = try await net.status("e1")
            #expect((eStatus["federation"] as? [[String: Any]])?.first?["reachable"] as? Bool == false)

            try net.link(up: true)
            #expect(try await firstAnswer(client, "db@us", within: .seconds(30)) == "probe")
            for i in 0..<20 {
                #expect(String(buffer: try await client.request(cluster: "db@us", "again\(i)", timeout: .seconds(5))) == "again\(i)")
            }
            try await client.close()
            try await db.close()
        }
    }
}
