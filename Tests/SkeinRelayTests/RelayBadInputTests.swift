import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

/// RELAY-PROTOCOL.md, "Bad input": every malformed stream ends that connection only (with a
/// CLOSE carrying the reason once the handshake is done), and every other connection keeps
/// working. Each test runs a witness client and member through a request/reply round trip
/// before and after the offence.
@Suite("Relay over TCP: bad input ends that connection only")
struct RelayBadInputTests {
    struct Offence: Sendable, CustomTestStringConvertible {
        var name: String
        var hex: String
        var reason: String
        var testDescription: String { name }
    }

    static let afterHandshake: [Offence] = [
        Offence(name: "unknown opcode", hex: "0e", reason: "protocol violation: unknown opcode 0xe"),
        Offence(name: "opcode only a relay sends (DENY)", hex: "01 00 00", reason: "protocol violation: unknown opcode 0x1"),
        Offence(name: "invalid bool", hex: "05 00 02", reason: "protocol violation: invalid bool byte 0x2"),
        Offence(
            name: "length of 2^62 (the frame that crashed the reference node)",
            hex: "03 04 65 63 68 6f 80 80 80 80 80 80 80 80 40",
            reason: "protocol violation: broadcast message of 4611686018427387904 bytes exceeds the limit of 33554432 bytes"),
        Offence(
            name: "length one above the maximum message size", hex: "08 01 74 81 80 80 10",
            reason: "protocol violation: event of 33554433 bytes exceeds the limit of 33554432 bytes"),
        Offence(name: "varint over 64 bits", hex: "04 ff ff ff ff ff ff ff ff ff 7f", reason: "protocol violation: varint longer than 64 bits"),
        Offence(name: "invalid UTF-8", hex: "06 02 c3 28", reason: "protocol violation: topic is not valid UTF-8"),
        Offence(name: "INIT sent twice", hex: Spec.clientINIT, reason: "protocol violation: INIT sent twice"),
        Offence(name: "UNSUBSCRIBE without SUBSCRIBE", hex: "07 01 74", reason: "protocol violation: not subscribed to topic \"t\""),
        Offence(
            name: "valid frames, then garbage in the same write", hex: "06 01 74 06 01 75 ff",
            reason: "protocol violation: unknown opcode 0xff"),
    ]

    @Test("after the handshake: CLOSE with the reason, then the socket", arguments: afterHandshake)
    func closesWithReason(_ offence: Offence) async throws {
        try await RelayHarness.run { relay in
            let witness = try await Witness.connect(relay)
            try await witness.roundTrip()
            let offender = try await relay.handshake("offender")
            try await offender.write(offence.hex)
            #expect(try await offender.readToEnd() == closeFrame(offence.reason))
            try await witness.roundTrip()
            await eventually("the relay to forget the offender") { await relay.service.server.connectionCount == 2 }
        }
    }

    @Test("a chunk above the chunk limit: CLOSE with the reason; the tunnel's other side fails")
    func chunkAboveLimit() async throws {
        try await RelayHarness.run { relay in
            let witness = try await Witness.connect(relay)
            let (offender, member) = try await Self.tunnel(relay)
            var chunk = ByteBuffer(hex: "0c 07 81 80 04 81 80 04")  // 65537 bytes; the limit is 65536
            chunk.writeRepeatingByte(0x55, count: 65537)
            try await offender.write(chunk)
            #expect(
                try await offender.readToEnd()
                    == closeFrame("protocol violation: tunnel chunk of 65537 bytes exceeds the limit of 65536 bytes"))
            guard case .tunnelClose(42, let reason) = try await member.readFrame() else {
                Issue.record("the member's end of the tunnel was not closed")
                return
            }
            #expect(!reason.isEmpty)
            try await witness.roundTrip()
        }
    }

    @Test("sending beyond the relay's allowance: CLOSE with the reason")
    func beyondAllowance() async throws {
        try await RelayHarness.run({ $0.settings.tunnelBuffer = 1000 }) { relay in
            let witness = try await Witness.connect(relay)
            let member = try await relay.handshake("tunnel member", cluster: "tunnels")
            let offender = try await relay.handshake("offender")
            try await offender.write("09 07 07 74 75 6e 6e 65 6c 73 90 4e")  // a 10 s build timeout
            #expect(try await member.read(hexLike: "09 00 80 80 04") == "09 00 80 80 04")
            try await member.write("0a 00 2a")  // and no ALLOW: nothing is forwarded, nothing granted back
            #expect(try await offender.read(hexLike: "0a 07 00 80 80 04 0b 07 e8 07") == "0a 07 00 80 80 04 0b 07 e8 07")
            var chunks = ByteBuffer(hex: "0c 07 e9 07 e8 07")  // 1000 bytes of a 1001-byte message: allowed
            chunks.writeRepeatingByte(1, count: 1000)
            chunks.writeBytes(hexBytes("0c 07 00 01 02"))  // one more byte: beyond the allowance
            try await offender.write(chunks)
            #expect(try await offender.readToEnd() == closeFrame("protocol violation: tunnel 7 sent 1 bytes with only 0 allowed"))
            try await witness.roundTrip()
        }
    }

    /// A tunnel as in the spec's example (7 ↔ 42), to a member of cluster "tunnels" so that the
    /// witness's member of "echo" stays out of it. Both sides allow 64 MiB.
    static func tunnel(_ relay: RelayHarness) async throws -> (initiator: WireClient, member: WireClient) {
        let member = try await relay.handshake("tunnel member", cluster: "tunnels")
        let initiator = try await relay.handshake("initiator")
        try await initiator.write("09 07 07 74 75 6e 6e 65 6c 73 90 4e")  // a 10 s build timeout
        #expect(try await member.read(hexLike: "09 00 80 80 04") == "09 00 80 80 04")
        try await member.write("0a 00 2a 0b 2a 80 80 80 20")
        #expect(try await member.read(hexLike: "0b 2a 80 80 80 02") == "0b 2a 80 80 80 02")
        #expect(try await initiator.read(hexLike: "0a 07 00 80 80 04 0b 07 80 80 80 02") == "0a 07 00 80 80 04 0b 07 80 80 80 02")
        try await initiator.write("0b 07 80 80 80 20")
        return (initiator, member)
    }

    @Test("EOF in the middle of a frame ends that connection only")
    func eofMidFrame() async throws {
        try await RelayHarness.run { relay in
            let witness = try await Witness.connect(relay)
            let offender = try await relay.handshake("offender")
            try await offender.write("04 00 04 65 63")
            try await offender.shutdownOutput()
            // The peer has half-closed; the relay closes its socket (nothing more can be read).
            #expect(try await offender.readToEnd().readableBytes == 0)
            await eventually("the relay to forget the offender") { await relay.service.server.connectionCount == 2 }
            try await witness.roundTrip()
        }
    }

    @Test("EOF in the middle of the INIT ends that connection only")
    func eofMidInit() async throws {
        try await RelayHarness.run { relay in
            let witness = try await Witness.connect(relay)
            let offender = try await relay.connect("offender")
            try await offender.write(String(Spec.clientINIT.prefix(20)))
            try await offender.shutdownOutput()
            #expect(try await offender.readToEnd().readableBytes == 0)
            try await witness.roundTrip()
        }
    }

    static let magics = ["iris-relay-magic", "", "iris-client-magiC"]

    @Test("wrong magic: the socket closes without a frame", arguments: magics)
    func wrongMagic(_ magic: String) async throws {
        try await RelayHarness.run { relay in
            let witness = try await Witness.connect(relay)
            let offender = try await relay.connect("offender")
            try await offender.write(.initialize(magic: magic, version: "v1.0-draft2", cluster: "echo"))
            #expect(try await offender.readToEnd().readableBytes == 0)
            // It never joined echo: the witness member still gets every request.
            try await witness.roundTrip()
            try await witness.roundTrip()
        }
    }

    @Test("a first frame other than INIT: the socket closes without a frame")
    func firstFrameNotInit() async throws {
        try await RelayHarness.run { relay in
            let witness = try await Witness.connect(relay)
            let offender = try await relay.connect("offender")
            try await offender.write("04 00 04 65 63 68 6f 05 68 65 6c 6c 6f e8 07")
            #expect(try await offender.readToEnd().readableBytes == 0)
            try await witness.roundTrip()
        }
    }

    @Test("garbage instead of INIT: the socket closes without a frame")
    func garbageFirst() async throws {
        try await RelayHarness.run { relay in
            let witness = try await Witness.connect(relay)
            let offender = try await relay.connect("offender")
            try await offender.write("47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a")  // "GET / HTTP/1.1"
            #expect(try await offender.readToEnd().readableBytes == 0)
            try await witness.roundTrip()
        }
    }

    @Test("wrong version: DENY with the reason, then the socket closes", arguments: ["skein/3", "v1.0-draft1"])
    func wrongVersion(_ version: String) async throws {
        try await RelayHarness.run { relay in
            let witness = try await Witness.connect(relay)
            let offender = try await relay.connect("offender")
            try await offender.write(.initialize(magic: "iris-client-magic", version: version, cluster: ""))
            let reason = "Unsupported protocol. Client: \(version). Relay: v1.0-draft2, skein/1, skein/2."
            let expected =
                "01 10 69 72 69 73 2d 72 65 6c 61 79 2d 6d 61 67 69 63 "
                + ByteBuffer(bytes: [UInt8(reason.utf8.count)] + Array(reason.utf8)).hex
            #expect(try await offender.readToEnd().hex == expected)
            try await witness.roundTrip()
        }
    }

    @Test("no INIT within the handshake timeout: the socket closes without a frame")
    func handshakeTimeout() async throws {
        // 3 s, not less: on a loaded machine the half INIT must be written before the timeout.
        try await RelayHarness.run({ $0.settings.handshakeTimeout = .milliseconds(3000) }) { relay in
            let witness = try await Witness.connect(relay)
            let silent = try await relay.connect("silent")
            let slow = try await relay.connect("slow")
            try await slow.write(String(Spec.clientINIT.prefix(30)))  // half an INIT, never finished
            #expect(try await silent.readToEnd(within: .seconds(10)).readableBytes == 0)
            #expect(try await slow.readToEnd(within: .seconds(10)).readableBytes == 0)
            try await witness.roundTrip()
        }
    }

    @Test("silent and slow connections never delay another client's handshake")
    func silentDoesNotDelay() async throws {
        // A relay that waited for the silent connections would take the handshake timeout (30 s)
        // to answer the others; the bound below leaves a loaded machine plenty of room.
        try await RelayHarness.run({ $0.settings.handshakeTimeout = .seconds(30) }) { relay in
            var idle: [WireClient] = []
            for i in 0..<4 {
                idle.append(try await relay.connect("idle \(i)"))
            }
            try await idle[0].write(String(Spec.clientINIT.prefix(8)))
            let start = ContinuousClock.now
            let member = try await relay.connect("member")
            try await member.write(Spec.memberINIT)
            #expect(try await member.read(hexLike: Spec.relayINIT, within: .seconds(10)) == Spec.relayINIT)
            let client = try await relay.connect("client")
            try await client.write(Spec.clientINIT)
            #expect(try await client.read(hexLike: Spec.relayINIT, within: .seconds(10)) == Spec.relayINIT)
            #expect(ContinuousClock.now - start < .seconds(10))
            for c in idle { #expect(await !c.isClosed) }
        }
    }
}
