// Real relay processes on 127.0.0.1 forming a mesh: membership, failures, keys.
import Foundation
import SkeinTestSupport
import NIOConcurrencyHelpers
import Skein
import SkeinCrypto
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A relay process in a mesh, with the ports it logged.
struct MeshRelay {
    let child: Child
    let name: String
    let clientPort: Int
    let adminPort: Int
    let meshPort: Int
    var meshAddress: String { "127.0.0.1:\(meshPort)" }
    var relayFlag: [String] { ["--relay", "127.0.0.1:\(clientPort)"] }

    /// `/members` as (name → status), self included.
    func view() async throws -> [String: String] {
        let (body, status) = try await httpGet(port: adminPort, path: "/members")
        guard status == 200, let json = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let members = json["members"] as? [[String: Any]]
        else { throw HarnessError("bad /members answer from \(name): \(String(decoding: body, as: UTF8.self))") }
        // A restarted relay keeps its name: its old record (left) and the new one (alive) are
        // both listed for a while, and the live one is what counts.
        var view: [String: String] = [:]
        for member in members {
            let name = member["name"] as? String ?? "?"
            let status = member["status"] as? String ?? "?"
            if view[name] == nil || status == "alive" { view[name] = status }
        }
        return view
    }

    func members() async throws -> [[String: Any]] {
        let (body, _) = try await httpGet(port: adminPort, path: "/members")
        let json = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]
        return json?["members"] as? [[String: Any]] ?? []
    }
}

extension Scope {
    /// A key file in the scratch directory.
    func keyFile(_ name: String, keys: [NetworkKey]) throws -> String {
        let path = self.path(name).path
        let text = keys.map(\.fileContents).joined()
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw HarnessError("cannot create \(path)") }
        defer { close(fd) }
        _ = fchmod(fd, 0o600)
        let bytes = Array(text.utf8)
        guard write(fd, bytes, bytes.count) == bytes.count else { throw HarnessError("cannot write \(path)") }
        return path
    }

    /// Starts `skein relay` in a mesh on 127.0.0.1 with the fast gossip profile.
    func startMeshRelay(_ name: String, keyFile: String, seeds: [MeshRelay] = [], bindPort: Int = 0, extra: [String] = []) async throws -> MeshRelay {
        let arguments = [
            "relay", "--key-file", keyFile, "--client-port", "0", "--admin-port", "0",
            "--bind", "127.0.0.1:\(bindPort)", "--name", name, "--gossip-profile", "fast",
        ] + seeds.flatMap { ["--seed", $0.meshAddress] } + extra
        let child = try spawn(arguments, name: name)
        try await child.waitForStderr("relay ready")
        let log = child.stderr
        /// The port in `marker…` on the first log line that mentions `line`.
        func port(_ marker: String, onLine line: String) throws -> Int {
            guard let text = log.split(separator: "\n").first(where: { $0.contains(line) }),
                let range = text.range(of: marker), let port = Int(text[range.upperBound...].prefix(while: \.isNumber))
            else {
                throw HarnessError("no \(marker) on a \(line) line in the log of \(name)\n\(child.report)")
            }
            return port
        }
        return MeshRelay(
            child: child, name: name,
            clientPort: try port("address=127.0.0.1:", onLine: "listening for clients"),
            adminPort: try port("address=http://127.0.0.1:", onLine: "admin endpoint listening"),
            meshPort: try port("address=127.0.0.1:", onLine: "gossip listening"))
    }
}

/// Polls `condition` until it holds, or fails with `what` after `limit` (SkeinTestSupport).
func waitFor(_ what: String, within limit: Duration = .seconds(15), _ condition: () async throws -> Bool) async throws {
    // A failing probe (a relay still starting) is "not yet", not the end of the wait.
    try await waitUntil(within: limit, polling: .milliseconds(50), what) { (try? await condition()) == true }
}

/// Waits until every relay in `observers` sees `name` with `status`.
func waitAllSee(_ observers: [MeshRelay], _ name: String, _ status: String, within limit: Duration = .seconds(15)) async throws {
    try await waitFor("\(observers.map(\.name)) to see \(name) \(status)", within: limit) {
        for observer in observers where try await observer.view()[name] != status { return false }
        return true
    }
}

@Suite("Mesh: real relay processes", .serialized, .timeLimit(.minutes(3)))
struct MeshTests {
    @Test("ten relays joined through one seed all see each other alive")
    func tenConverge() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let seed = try await scope.startMeshRelay("r0", keyFile: key)
            var relays = [seed]
            for i in 1..<10 { relays.append(try await scope.startMeshRelay("r\(i)", keyFile: key, seeds: [seed])) }
            try await waitFor("all ten to see ten alive") {
                for relay in relays {
                    let view = try await relay.view()
                    guard view.count == 10, view.values.allSatisfy({ $0 == "alive" }) else { return false }
                }
                return true
            }
        }
    }

    @Test("kill -9 of a relay is seen as dead by every other relay")
    func killNine() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let others = [a] + [
                try await scope.startMeshRelay("b", keyFile: key, seeds: [a]),
                try await scope.startMeshRelay("c", keyFile: key, seeds: [a]),
            ]
            let victim = try await scope.startMeshRelay("victim", keyFile: key, seeds: [a])
            try await waitAllSee(others, "victim", "alive")
            victim.child.send(SIGKILL)
            try await waitAllSee(others, "victim", "dead", within: .seconds(10))
            for relay in others { #expect(try await relay.view().filter { $0.value != "alive" }.keys.sorted() == ["victim"]) }
        }
    }

    @Test("a relay paused past the suspicion timeout is seen dead, then alive again after SIGCONT")
    func pauseAndResume() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let others = [a, try await scope.startMeshRelay("b", keyFile: key, seeds: [a]), try await scope.startMeshRelay("c", keyFile: key, seeds: [a])]
            let sleeper = try await scope.startMeshRelay("sleeper", keyFile: key, seeds: [a])
            try await waitAllSee(others, "sleeper", "alive")
            sleeper.child.send(SIGSTOP)
            try await waitAllSee(others, "sleeper", "dead", within: .seconds(15))
            sleeper.child.send(SIGCONT)
            try await waitAllSee(others + [sleeper], "sleeper", "alive", within: .seconds(10))
            try await waitAllSee([sleeper], "a", "alive", within: .seconds(10))
        }
    }

    @Test("a graceful stop is seen as left, never as dead")
    func gracefulLeave() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
            let leaver = try await scope.startMeshRelay("leaver", keyFile: key, seeds: [a])
            try await waitAllSee([a, b], "leaver", "alive")
            leaver.child.send(SIGTERM)
            #expect(try await leaver.child.waitForExit() == 0)
            try await waitAllSee([a, b], "leaver", "left", within: .seconds(5))
            for relay in [a, b] {
                let lines = relay.child.stderr.split(separator: "\n")
                #expect(!lines.contains { $0.contains("name=leaver ") && ($0.contains("relay is dead") || $0.contains("relay is suspect")) })
            }
        }
    }

    @Test("a relay with another key is refused, says why, and never appears in the membership")
    func wrongKeyRefused() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let otherKey = NetworkKey.generate()
            let intruderKey = try scope.keyFile("other.key", keys: [otherKey])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
            try await waitAllSee([a, b], "b", "alive")
            let intruder = try await scope.startMeshRelay("intruder", keyFile: intruderKey, seeds: [a])
            try await waitFor("a to log the refusal") {
                a.child.stderr.contains("peer handshake rejected") && a.child.stderr.contains("the peer uses key \(otherKey.keyID)")
            }
            try await waitFor("the intruder to log that it was refused") {
                intruder.child.stderr.contains("reason=the peer refused the handshake")
            }
            // Give gossip time to leak if it could: several probe rounds of the fast profile.
            try await Task.sleep(for: .seconds(1))
            #expect(try await a.view().keys.sorted() == ["a", "b"])
            #expect(try await b.view().keys.sorted() == ["a", "b"])
            #expect(try await intruder.view().keys.sorted() == ["intruder"])
        }
    }

    @Test("clusters served on one relay appear in every relay's view of it; skein members shows them")
    func metadataAndMembersCommand() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key, extra: ["--zone", "rack-1"])
            let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
            try await waitAllSee([a, b], "b", "alive")
            let server = try scope.spawn(["serve", "thumbnails", "--echo"] + b.relayFlag, name: "serve")
            try await server.waitForStderr("ready")
            try await waitFor("a to see b serving thumbnails") {
                let b = try await a.members().first { $0["name"] as? String == "b" }
                return (b?["clusters"] as? [String: Any])?["thumbnails"] as? Int == 1
            }
            let table = try await scope.run(["members", "--admin", "127.0.0.1:\(a.adminPort)"])
            #expect(table.status == 0)
            let lines = table.stdoutText.split(separator: "\n")
            #expect(lines.first?.hasPrefix("NAME") == true)
            #expect(lines.contains { $0.hasPrefix("a *") && $0.contains("rack-1") && $0.contains("alive") })
            #expect(lines.contains { $0.hasPrefix("b ") && $0.contains("thumbnails") && $0.contains("alive") })
            #expect(lines.last == "2 members: 2 alive", "\(table.stdoutText)")
            let json = try await scope.run(["members", "--json", "--admin", "127.0.0.1:\(a.adminPort)"])
            let object = try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any]
            let members = try #require(object?["members"] as? [[String: Any]])
            #expect(Set(members.compactMap { $0["name"] as? String }) == ["a", "b"])
            for member in members {
                for field in ["name", "node", "address", "status", "incarnation", "self", "zone", "clusters", "topics", "load", "metadataVersion"] {
                    #expect(member[field] != nil, "missing \(field)")
                }
            }
            // The cluster goes away with its member.
            server.send(SIGTERM)
            try await waitFor("a to see b serving nothing") {
                let b = try await a.members().first { $0["name"] as? String == "b" }
                return (b?["clusters"] as? [String: Any])?.isEmpty == true
            }
        }
    }

    @Test("skein members marks a relay killed with -9 dead and counts it; skein status lists the peer links")
    func membersMarksDead() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
            let c = try await scope.startMeshRelay("c", keyFile: key, seeds: [a])
            let relays = [a, b, c]
            for relay in relays { try await waitAllSee(relays, relay.name, "alive") }
            let admin = ["--admin", "127.0.0.1:\(a.adminPort)"]

            // status: the mesh section and one row per peer link, under its header.
            try await waitFor("a's status to list links to b and c") {
                let status = try await scope.run(["status"] + admin)
                let output = lines(status.stdoutText)
                guard status.status == 0, output.contains("Mesh"), output.contains(where: { cells($0) == ["name", "a"] }),
                    output.contains(where: { cells($0).first == "PEER" && cells($0).last == "CIPHER" })
                else { return false }
                return [b, c].allSatisfy { peer in
                    output.contains { cells($0).first == peer.name && cells($0).dropFirst().first == peer.meshAddress }
                }
            }

            let before = try await scope.run(["members"] + admin)
            #expect(before.status == 0, "\(before.stderr)")
            #expect(lines(before.stdoutText).filter { !$0.isEmpty }.last == "3 members: 3 alive", "\(before.stdoutText)")
            #expect(!before.stdoutText.contains("!"), "no row is marked while all are alive")

            c.child.send(SIGKILL)
            var table = ""
            try await waitFor("a's table to show c dead") {
                let outcome = try await scope.run(["members"] + admin)
                table = outcome.stdoutText
                return outcome.status == 0 && lines(table).contains { $0.hasPrefix("c ") && $0.contains("DEAD !") }
            }
            let output = lines(table).filter { !$0.isEmpty }
            #expect(output.last == "3 members: 2 alive, 1 dead", "\(table)")
            #expect(!table.contains("\u{1B}"), "no colour when stdout is not a terminal")
            // The marker sits in the STATUS column, aligned with the header.
            let header = try #require(output.first)
            let deadRow = try #require(output.first { $0.hasPrefix("c ") })
            let statusColumn = header.distance(from: header.startIndex, to: try #require(header.range(of: "STATUS")).lowerBound)
            let markerColumn = deadRow.distance(from: deadRow.startIndex, to: try #require(deadRow.range(of: "DEAD !")).lowerBound)
            #expect(statusColumn == markerColumn, "\(table)")
            #expect(output.contains { $0.hasPrefix("b ") && cells($0)[3] == "alive" }, "\(table)")

            // --json agrees, and parses.
            let json = try await scope.run(["members", "--json"] + admin)
            let object = try #require(try JSONSerialization.jsonObject(with: json.stdout) as? [String: Any])
            let members = try #require(object["members"] as? [[String: Any]])
            #expect(members.first { $0["name"] as? String == "c" }?["status"] as? String == "dead")
        }
    }

    @Test("seeds may be down or wrong: a relay joins through any live one")
    func badSeeds() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let deadPort = try await freeLocalPort()
            let b = try await scope.startMeshRelay(
                "b", keyFile: key, extra: ["--seed", "127.0.0.1:\(deadPort)", "--seed", "no-such-host.invalid:7946", "--seed", a.meshAddress])
            try await waitAllSee([a, b], "b", "alive")
            try await waitAllSee([a, b], "a", "alive")
        }
    }

    @Test("skein join makes a running relay join the mesh")
    func joinCommand() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let b = try await scope.startMeshRelay("b", keyFile: key)
            #expect(try await b.view() == ["b": "alive"])
            let outcome = try await scope.run(["join", "--admin", "127.0.0.1:\(b.adminPort)", a.meshAddress])
            #expect(outcome.status == 0, "\(outcome.stderr)")
            #expect(outcome.stdoutText.contains(a.meshAddress))
            try await waitAllSee([a, b], "a", "alive")
            try await waitAllSee([a, b], "b", "alive")
            let bad = try await scope.run(["join", "--admin", "127.0.0.1:\(b.adminPort)"])
            #expect(bad.status == 64)
        }
    }

    @Test("keys rotate across three relays with SIGHUP: no relay ever looks down, no request fails")
    func keyRotation() async throws {
        try await withScope { scope in
            let old = NetworkKey.generate()
            let new = NetworkKey.generate()
            let names = ["a", "b", "c"]
            var files: [String] = []
            for name in names { files.append(try scope.keyFile("\(name).keys", keys: [old])) }
            let a = try await scope.startMeshRelay("a", keyFile: files[0])
            let relays = [a, try await scope.startMeshRelay("b", keyFile: files[1], seeds: [a]), try await scope.startMeshRelay("c", keyFile: files[2], seeds: [a])]
            for relay in relays { try await waitAllSee(relays, relay.name, "alive") }
            // Requests from A to members on B and C flow throughout the rotation.
            let onB = try await NamedMember.start("on-b", cluster: "echo", on: relays[1])
            let onC = try await NamedMember.start("on-c", cluster: "echo", on: relays[2])
            try await a.waitSees("b", serving: "echo")
            try await a.waitSees("c", serving: "echo")
            let client = try await Skein.connect(to: a.endpoint)
            let answered = NIOLockedValueBox(0)
            let requester = Task { () -> (ok: Int, failed: [String]) in
                var ok = 0
                var failed: [String] = []
                while !Task.isCancelled {
                    do {
                        _ = try await client.request(cluster: "echo", "during rotation", timeout: .seconds(3))
                        ok += 1
                        answered.withLockedValue { $0 += 1 }
                    } catch {
                        if !Task.isCancelled { failed.append("\(error)") }
                    }
                    try? await Task.sleep(for: .milliseconds(5))
                }
                return (ok, failed)
            }

            // Watch every view continuously while the keys change underneath.
            let watcher = Task { () -> [String] in
                var problems: [String] = []
                while !Task.isCancelled {
                    for relay in relays {
                        if let view = try? await relay.view(), view.count == 3, view.values.contains(where: { $0 != "alive" }) {
                            problems.append("\(relay.name) saw \(view)")
                        }
                    }
                    try? await Task.sleep(for: .milliseconds(20))
                }
                return problems
            }
            var answeredPerStep: [String: Int] = [:]
            func step(_ keys: [NetworkKey], _ label: String) async throws {
                let before = answered.withLockedValue { $0 }
                for (relay, file) in zip(relays, files) {
                    _ = try scope.keyFile(URL(fileURLWithPath: file).lastPathComponent, keys: keys)
                    relay.child.send(SIGHUP)
                    try await relay.child.waitForStderr("keyring reloaded", within: .seconds(5))
                }
                // Several probe rounds and a push-pull on the new keys.
                try await Task.sleep(for: .milliseconds(700))
                answeredPerStep[label] = answered.withLockedValue { $0 } - before
            }
            try await step([old, new], "install the new key")
            try await step([new, old], "make it primary")
            try await step([new], "retire the old key")
            for relay in relays { try await waitAllSee(relays, relay.name, "alive") }
            watcher.cancel()
            requester.cancel()
            let problems = await watcher.value
            let requests = await requester.value
            #expect(problems.isEmpty, "\(problems.prefix(5))")
            #expect(requests.failed.isEmpty, "\(requests.failed.count) requests failed: \(requests.failed.prefix(3))")
            // Requests were answered during every step (how many depends on the machine's load:
            // about 300 alone, 50 beside the rest of the suite).
            for label in ["install the new key", "make it primary", "retire the old key"] {
                #expect((answeredPerStep[label] ?? 0) > 0, "no request answered while: \(label)")
            }
            #expect(requests.ok > 0)
            try await client.close()
            try await onB.connection.close()
            try await onC.connection.close()
            for relay in relays {
                #expect(!relay.child.stderr.contains("peer handshake rejected"), "\(relay.name) rejected a handshake")
            }
        }
    }
}

/// A TCP port nobody listens on (bound and closed a moment ago).
func freeLocalPort() async throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}
