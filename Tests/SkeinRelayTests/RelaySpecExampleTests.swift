import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

/// The worked examples of RELAY-PROTOCOL.md against a real relay over TCP, byte for byte.
@Suite("Relay over TCP: the spec's examples")
struct RelaySpecExampleTests {
    @Test("a plain client's INIT is answered with the relay's INIT")
    func plainClientINIT() async throws {
        try await RelayHarness.run { relay in
            let client = try await relay.connect()
            try await client.write(Spec.clientINIT)
            #expect(try await client.read(hexLike: Spec.relayINIT) == Spec.relayINIT)
            await client.close()
        }
    }

    @Test("request, reply, fault and timeout between a client and a member of echo")
    func requestReply() async throws {
        try await RelayHarness.run { relay in
            let member = try await relay.connect("member")
            try await member.write(Spec.memberINIT)
            #expect(try await member.read(hexLike: Spec.relayINIT) == Spec.relayINIT)
            let client = try await relay.connect("client")
            try await client.write(Spec.clientINIT)
            #expect(try await client.read(hexLike: Spec.relayINIT) == Spec.relayINIT)

            // Success. The member is handed the request with the time that remains, exactly the
            // caller's 10 s (90 4e; the spec's example says 1 s, e8 07, which a loaded machine
            // can miss — the bytes of that example are checked in SkeinWireTests).
            try await client.write("04 00 04 65 63 68 6f 05 68 65 6c 6c 6f 90 4e")
            #expect(try await member.read(hexLike: "04 00 05 68 65 6c 6c 6f 90 4e") == "04 00 05 68 65 6c 6c 6f 90 4e")
            try await member.write("05 00 01 05 68 65 6c 6c 6f")
            #expect(try await client.read(hexLike: "05 00 00 01 05 68 65 6c 6c 6f") == "05 00 00 01 05 68 65 6c 6c 6f")

            // Fault: the client's id 1 is the member's id 1 too (the relay's second request to it).
            // 10 s (90 4e) rather than the example's 1 s, so a loaded machine cannot time it out.
            try await client.write("04 01 04 65 63 68 6f 05 68 65 6c 6c 6f 90 4e")
            #expect(try await member.read(hexLike: "04 01 05 68 65 6c 6c 6f 90 4e").hasPrefix("04 01 05 68 65 6c 6c 6f"))
            try await member.write("05 01 00 04 62 6f 6f 6d")
            #expect(try await client.read(hexLike: "05 01 00 00 04 62 6f 6f 6d") == "05 01 00 00 04 62 6f 6f 6d")

            // Timeout: id 3, 100 ms, the member stays silent; the relay owns the deadline.
            try await client.write("04 03 04 65 63 68 6f 01 71 64")
            #expect(try await member.read(hexLike: "04 02 01 71 64") == "04 02 01 71 64")
            #expect(try await client.read(hexLike: "05 03 01") == "05 03 01")
            // Its late reply is dropped. The member's own broadcast coming back proves the relay
            // has handled the reply; then the next thing the client sees is its next answer.
            try await member.write("05 02 01 01 78")
            try await member.write("03 04 65 63 68 6f 00")
            #expect(try await member.read(hexLike: "03 00") == "03 00")
            try await client.write("04 04 04 65 63 68 6f 00 00")
            #expect(try await client.read(hexLike: "05 04 01") == "05 04 01")
            await member.close()
            await client.close()
        }
    }

    @Test("the tunnel example, then a 100000-byte message in two chunks, then a graceful close")
    func tunnel() async throws {
        try await RelayHarness.run { relay in
            let member = try await relay.handshake("member", cluster: "echo")
            let initiator = try await relay.handshake("initiator")

            // The spec example says e8 07 (1 s); 90 4e (10 s) keeps a loaded machine from timing the build out.
            try await initiator.write("09 07 04 65 63 68 6f 90 4e")
            #expect(try await member.read(hexLike: "09 00 80 80 04") == "09 00 80 80 04")
            try await member.write("0a 00 2a")
            #expect(try await member.read(hexLike: "0b 2a 80 80 80 02") == "0b 2a 80 80 80 02")
            #expect(try await initiator.read(hexLike: "0a 07 00 80 80 04 0b 07 80 80 80 02") == "0a 07 00 80 80 04 0b 07 80 80 80 02")
            try await initiator.write("0b 07 80 80 80 20")
            try await member.write("0b 2a 80 80 80 20")

            let message = ByteBuffer(bytes: (0..<100_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
            var first = ByteBuffer(hex: "0c 07 a0 8d 06 80 80 04")
            first.writeImmutableBuffer(message.getSlice(at: 0, length: 65536)!)
            var second = ByteBuffer(hex: "0c 07 00 a0 8d 02")
            second.writeImmutableBuffer(message.getSlice(at: 65536, length: 34464)!)
            try await initiator.write(first)
            try await initiator.write(second)

            #expect(try await member.read(hexLike: "0c 2a a0 8d 06 80 80 04") == "0c 2a a0 8d 06 80 80 04")
            #expect(try await member.read(65536) == message.getSlice(at: 0, length: 65536)!)
            #expect(try await member.read(hexLike: "0c 2a 00 a0 8d 02") == "0c 2a 00 a0 8d 02")
            #expect(try await member.read(34464) == message.getSlice(at: 65536, length: 34464)!)
            // The relay grants the initiator's allowance back as it forwards.
            #expect(try await initiator.read(hexLike: "0b 07 80 80 04 0b 07 a0 8d 02") == "0b 07 80 80 04 0b 07 a0 8d 02")

            // And the other way.
            try await member.write("0c 2a 02 02 6f 6b")
            #expect(try await initiator.read(hexLike: "0c 07 02 02 6f 6b") == "0c 07 02 02 6f 6b")
            #expect(try await member.read(hexLike: "0b 2a 02") == "0b 2a 02")

            try await initiator.write("0d 07")
            #expect(try await initiator.read(hexLike: "0d 07 00") == "0d 07 00")
            #expect(try await member.read(hexLike: "0d 2a 00") == "0d 2a 00")
            await member.close()
            await initiator.close()
        }
    }

    @Test("broadcast and publish reach everyone, the sender included")
    func broadcastAndPublish() async throws {
        try await RelayHarness.run { relay in
            let a = try await relay.handshake("a", cluster: "echo")
            let b = try await relay.handshake("b", cluster: "echo")
            try await a.write("03 04 65 63 68 6f 02 68 69")
            #expect(try await a.read(hexLike: "03 02 68 69") == "03 02 68 69")
            #expect(try await b.read(hexLike: "03 02 68 69") == "03 02 68 69")

            // Each subscribes, then broadcasts; once both have seen both broadcasts, both
            // subscriptions are in place.
            try await a.write("06 01 74 03 04 65 63 68 6f 01 61")
            try await b.write("06 01 74 03 04 65 63 68 6f 01 62")
            for peer in [a, b] {
                var seen: [RelayFrame] = []
                for _ in 0..<2 { seen.append(try await peer.readFrame()) }
                #expect(seen.contains(.broadcast(message: ByteBuffer(string: "a"))))
                #expect(seen.contains(.broadcast(message: ByteBuffer(string: "b"))))
            }
            // a publishes 1, 2, 3 and b publishes 0: everyone, publishers included, gets all
            // four, with a's three in publish order.
            try await a.write("08 01 74 01 31 08 01 74 01 32 08 01 74 01 33")
            try await b.write("08 01 74 01 30")
            for peer in [a, b] {
                var events: [String] = []
                for _ in 0..<4 {
                    guard case .publish("t", let event) = try await peer.readFrame() else {
                        Issue.record("\(peer.name) got something other than an event on t")
                        return
                    }
                    events.append(String(buffer: event))
                }
                #expect(events.filter { $0 != "0" } == ["1", "2", "3"])
                #expect(events.contains("0"))
            }
            await a.close()
            await b.close()
        }
    }

    @Test("CLOSE from the binding is answered with 02 00, then the socket closes")
    func gracefulClose() async throws {
        try await RelayHarness.run { relay in
            let client = try await relay.handshake()
            try await client.write("02")
            #expect(try await client.readToEnd().hex == "02 00")
            await eventually("the relay to forget the connection") { await relay.service.server.connectionCount == 0 }
        }
    }

    @Test("shutting the relay down closes every connection with a reason")
    func shutdown() async throws {
        let client = ClientBox()
        try await RelayHarness.run { relay in
            client.value = try await relay.handshake()
        }
        // The relay has stopped by now; its last words were CLOSE with a reason.
        let rest = try await client.value!.readToEnd()
        #expect(rest == closeFrame("relay shutting down"))
    }

    private final class ClientBox: @unchecked Sendable {
        var value: WireClient?
    }
}
