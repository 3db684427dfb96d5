// Tunnel messages as the Iris bindings send them: of any size the protocol's length field
// carries, through real relay processes, one relay and across two; and a sender that gives up
// part way (Docs/relay-protocol.md, "Limits").
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Skein
import SkeinCrypto
import Testing

@Suite("Tunnel messages of any size", .serialized, .timeLimit(.minutes(10)))
struct HugeTunnelMessageTests {
    enum Path: String, CustomStringConvertible, CaseIterable {
        case oneRelay = "one relay"
        case acrossRelays = "across relays"
        var description: String { rawValue }
    }

    /// The relays a path needs, where the member lives and where the client connects.
    struct Setup {
        var relays: [(name: String, pid: Int32)]
        var memberRelay: RelayEndpoint
        var clientRelay: RelayEndpoint
        var waitForRoute: @Sendable (_ cluster: String) async throws -> Void
    }

    func setUp(_ path: Path, _ scope: Scope) async throws -> Setup {
        switch path {
        case .oneRelay:
            let relay = try await scope.startRelay()
            let endpoint = RelayEndpoint.tcp(host: "127.0.0.1", port: relay.port)
            return Setup(relays: [("relay", relay.child.pid)], memberRelay: endpoint, clientRelay: endpoint, waitForRoute: { _ in })
        case .acrossRelays:
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
            try await waitAllSee([a, b], "b", "alive")
            try await waitAllSee([a, b], "a", "alive")
            return Setup(
                relays: [("a", a.child.pid), ("b", b.child.pid)], memberRelay: b.endpoint, clientRelay: a.endpoint,
                waitForRoute: { cluster in try await a.waitSees("b", serving: cluster) })
        }
    }

    /// A message whose every byte depends on its offset, so a lost, doubled or misplaced chunk
    /// shows up in the comparison.
    static func pattern(_ size: Int) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: size)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for i in 0..<(size / 8) { words[i] = UInt64(i) &* 0x9E37_79B9_7F4A_7C15 }
            for i in (size / 8 * 8)..<size { raw[i] = UInt8(truncatingIfNeeded: i) }
            return size
        }
        return buffer
    }

    @Test(
        "one tunnel message of 64 MiB or 1 GiB arrives whole and identical; relay memory stays bounded",
        arguments: [Path.oneRelay, .acrossRelays], [64 << 20, 1 << 30])
    func singleHugeMessage(path: Path, size: Int) async throws {
        try await withScope { scope in
            let setup = try await setUp(path, scope)
            let message = Self.pattern(size)
            let received = NIOLockedValueBox<ByteBuffer?>(nil)
            let member = try await Skein.serve(
                cluster: "sink", to: setup.memberRelay, request: { $0.body },
                tunnel: { tunnel in
                    if let whole = try? await tunnel.receive() {
                        received.withLockedValue { $0 = whole }
                        try? await tunnel.send("got \(whole.readableBytes)")
                    }
                    while (try? await tunnel.receive()) != nil {}
                })
            try await setup.waitForRoute("sink")
            let client = try await Skein.connect(to: setup.clientRelay)
            let tunnel = try await client.tunnel(cluster: "sink", timeout: .seconds(5))

            // The relays' memory is sampled while the message is on its way.
            let peak = NIOLockedValueBox<[String: Int]>([:])
            let sampling = Task {
                while !Task.isCancelled {
                    for relay in setup.relays {
                        let rss = rssKiB(pid: relay.pid)
                        peak.withLockedValue { $0[relay.name] = max($0[relay.name] ?? 0, rss) }
                    }
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            let started = ContinuousClock.now
            try await tunnel.send(message)
            let answer = try #require(try await tunnel.receive(), "the member's answer")
            sampling.cancel()
            _ = await sampling.value
            print("tunnel message of \(size >> 20) MiB, \(path): \(ContinuousClock.now - started), relays' peak RSS \(peak.withLockedValue { $0 }.mapValues { "\($0 / 1024) MiB" })")
            #expect(String(buffer: answer) == "got \(size)")
            let whole = try #require(received.withLockedValue { $0 })
            #expect(whole.readableBytes == size)
            #expect(whole == message, "the bytes that arrived are the bytes sent")
            // A relay holds at most its tunnel buffer (4 MiB) per direction and the link's
            // windows: far below the message, whatever its size.
            for (name, rss) in peak.withLockedValue({ $0 }) {
                #expect(rss < 160 * 1024, "relay \(name) peaked at \(rss / 1024) MiB for a \(size >> 20) MiB message")
            }
            try await tunnel.close()
            try await client.close()
            try await member.close()
        }
    }

    @Test("a sender that times out part way through a message leaves the tunnel usable; the partial message is discarded",
          arguments: Path.allCases)
    func senderTimesOutMidMessage(path: Path) async throws {
        try await withScope { scope in
            let setup = try await setUp(path, scope)
            let reading = NIOLockedValueBox(false)
            let got = NIOLockedValueBox<[String]>([])
            let member = try await Skein.serve(
                cluster: "slow", to: setup.memberRelay, request: { $0.body },
                tunnel: { tunnel in
                    // Reads nothing until told: the first message sits unread, so the binding
                    // grants no more allowance and the big message stalls part way.
                    while !reading.withLockedValue({ $0 }) { try? await Task.sleep(for: .milliseconds(10)) }
                    while let message = try? await tunnel.receive() {
                        got.withLockedValue { $0.append(message.readableBytes > 64 ? "\(message.readableBytes) bytes" : String(buffer: message)) }
                    }
                })
            try await setup.waitForRoute("slow")
            let client = try await Skein.connect(to: setup.clientRelay)
            let tunnel = try await client.tunnel(cluster: "slow", timeout: .seconds(5))
            try await tunnel.send("first")
            // Far more than the receiver's window (16 MiB) and the relays' buffers together.
            let big = ByteBuffer(repeating: 0x42, count: 96 << 20)
            let timedOut: Bool
            do {
                try await tunnel.send(big, timeout: .milliseconds(1500))
                timedOut = false
            } catch let error as SkeinError {
                timedOut = error == .timedOut
            }
            #expect(timedOut, "the send gave up part way")
            reading.withLockedValue { $0 = true }
            try await tunnel.send("after", timeout: .seconds(30))
            try await waitFor("the member to receive the message after the abandoned one", within: .seconds(60)) {
                got.withLockedValue { $0 }.contains("after")
            }
            #expect(got.withLockedValue { $0 } == ["first", "after"], "the partial message was discarded, nothing else lost")
            // The tunnel still works both ways afterwards, and so does the connection.
            try await tunnel.send(ByteBuffer(repeating: 1, count: 1 << 20), timeout: .seconds(30))
            try await waitFor("a whole message after it", within: .seconds(30)) { got.withLockedValue { $0 }.count == 3 }
            #expect(got.withLockedValue { $0 }.last == "1048576 bytes")
            try await tunnel.close()
            try await client.close()
            try await member.close()
        }
    }
}
