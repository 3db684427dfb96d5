import NIOCore
import SkeinWire
import Testing

/// The worked hex examples of RELAY-PROTOCOL.md decode to the frames they describe and encode
/// back to exactly the same bytes.
@Suite("Spec examples")
struct SpecExampleTests {
    @Test("binding → relay", arguments: SpecExamples.client)
    func clientExample(_ example: Example<ClientFrame>) throws {
        var bytes = example.bytes
        let decoded = try ClientFrame.decode(from: &bytes, limits: WireLimits())
        #expect(decoded == example.frame)
        #expect(bytes.readableBytes == 0, "the frame must consume all of its bytes")

        var encoded = ByteBuffer()
        example.frame.encode(into: &encoded)
        #expect(encoded == example.bytes)
    }

    @Test("relay → binding", arguments: SpecExamples.relay)
    func relayExample(_ example: Example<RelayFrame>) throws {
        var bytes = example.bytes
        let decoded = try RelayFrame.decode(from: &bytes, limits: WireLimits())
        #expect(decoded == example.frame)
        #expect(bytes.readableBytes == 0, "the frame must consume all of its bytes")

        var encoded = ByteBuffer()
        example.frame.encode(into: &encoded)
        #expect(encoded == example.bytes)
    }

    @Test("the member INIT differs from the plain INIT only in its cluster")
    func memberInitSuffix() {
        #expect(SpecExamples.memberINIT.hasPrefix(String(SpecExamples.clientINIT.dropLast(2))))
        #expect(SpecExamples.memberINIT.hasSuffix("04 65 63 68 6f"))
    }

    @Test("the 100000-byte message splits into the example's two chunks")
    func chunkingExample() {
        var first = ByteBuffer()
        ClientFrame.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 100_000, chunk: pattern(65536)).encode(into: &first)
        #expect(first.readableBytes == 8 + 65536)
        #expect(ByteBuffer(first.readableBytesView.prefix(8)).hex == "0c 07 a0 8d 06 80 80 04")

        var second = ByteBuffer()
        ClientFrame.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 0, chunk: pattern(34464)).encode(into: &second)
        #expect(second.readableBytes == 6 + 34464)
        #expect(ByteBuffer(second.readableBytesView.prefix(6)).hex == "0c 07 00 a0 8d 02")
    }

    @Test("protocol constants match the spec")
    func constants() {
        #expect(RelayProtocol.irisVersion == "v1.0-draft2")
        #expect(RelayProtocol.clientMagic == "iris-client-magic")
        #expect(RelayProtocol.relayMagic == "iris-relay-magic")
        #expect(Opcode.allCases.map(\.rawValue) == Array(0x00...0x0d) + [0x20, 0x21, 0x22])
        #expect(RelayProtocol.skeinVersion == "skein/1")
        #expect(ProtocolDialect(version: "skein/1") == .skein1)
        #expect(ProtocolDialect(version: "v1.0-draft2") == .iris)
        #expect(ProtocolDialect(version: "skein/2") == nil)
        #expect([FailureReason.noMembers, .memberLost, .networkUnreachable, .notExported].map(\.rawValue) == [1, 2, 3, 4])
    }

    @Test("skein/1 examples (Docs/skein-1.md)", arguments: SpecExamples.skein1)
    func skein1Example(_ example: Example<RelayFrame>) throws {
        var bytes = example.bytes
        #expect(try RelayFrame.decode(from: &bytes, limits: WireLimits()) == example.frame)
        #expect(bytes.readableBytes == 0)
        var encoded = ByteBuffer()
        example.frame.encode(into: &encoded)
        #expect(encoded == example.bytes)
    }

    @Test("skein/1 INIT (Docs/skein-1.md)")
    func skein1Init() throws {
        var bytes = ByteBuffer(hex: SpecExamples.skein1ClientINIT)
        #expect(try ClientFrame.decode(from: &bytes, limits: WireLimits()) == .initialize(magic: "iris-client-magic", version: "skein/1", cluster: ""))
        var relay = ByteBuffer(hex: SpecExamples.skein1RelayINIT)
        #expect(try RelayFrame.decode(from: &relay, limits: WireLimits()) == .initialize(magic: "iris-relay-magic", version: "skein/1"))
    }
}
