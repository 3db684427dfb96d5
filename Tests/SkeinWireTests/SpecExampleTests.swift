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
        #expect(Opcode.allCases.map(\.rawValue) == Array(0x00...0x0d) + [0x20, 0x21, 0x22, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37])
        #expect(RelayProtocol.skeinVersion == "skein/1")
        #expect(ProtocolDialect(version: "skein/1") == .skein1)
        #expect(ProtocolDialect(version: "v1.0-draft2") == .iris)
        #expect(ProtocolDialect(version: "skein/2") == .skein2 && RelayProtocol.skein2Version == "skein/2")
        #expect(ProtocolDialect(version: "skein/3") == nil)
        #expect(ProtocolDialect.iris < .skein1 && ProtocolDialect.skein1 < .skein2)
        #expect([FailureReason.noMembers, .memberLost, .networkUnreachable, .notExported, .invalidName].map(\.rawValue) == [1, 2, 3, 4, 5])
    }

    @Test("skein/1 and skein/2 examples (Docs/skein-1.md, Docs/skein-2.md)", arguments: SpecExamples.skein1 + SpecExamples.skein2)
    func extensionExample(_ example: Example<RelayFrame>) throws {
        var bytes = example.bytes
        #expect(try RelayFrame.decode(from: &bytes, limits: WireLimits()) == example.frame)
        #expect(bytes.readableBytes == 0)
        var encoded = ByteBuffer()
        example.frame.encode(into: &encoded)
        #expect(encoded == example.bytes)
    }

    @Test("skein/1 and skein/2 INIT (Docs/skein-1.md, Docs/skein-2.md)", arguments: [
        ("skein/1", SpecExamples.skein1ClientINIT, SpecExamples.skein1RelayINIT),
        ("skein/2", SpecExamples.skein2ClientINIT, SpecExamples.skein2RelayINIT),
    ])
    func extensionInit(_ version: String, _ client: String, _ relay: String) throws {
        var bytes = ByteBuffer(hex: client)
        #expect(try ClientFrame.decode(from: &bytes, limits: WireLimits()) == .initialize(magic: "iris-client-magic", version: version, cluster: ""))
        var answer = ByteBuffer(hex: relay)
        #expect(try RelayFrame.decode(from: &answer, limits: WireLimits()) == .initialize(magic: "iris-relay-magic", version: version))
    }

    @Test("HPUBLISH as Docs/skein-2.md shows it")
    func hpublishExample() throws {
        var bytes = ByteBuffer(hex: "33 01 74 01 01 6b 01 76 01 ff")
        #expect(try ClientFrame.decode(from: &bytes, limits: WireLimits()) == .hpublish(topic: "t", headers: [Header("k", "v")], event: ByteBuffer(bytes: [0xff])))
        var encoded = ByteBuffer()
        ClientFrame.hpublish(topic: "t", headers: [Header("k", "v")], event: ByteBuffer(bytes: [0xff])).encode(into: &encoded)
        #expect(encoded == ByteBuffer(hex: "33 01 74 01 01 6b 01 76 01 ff"))
    }

    @Test("SURVEY, SURVEY ANSWER and SURVEY END as Docs/skein-2.md shows them")
    func surveyExamples() throws {
        let examples: [(String, RelayFrame)] = [
            ("36 01 00 01 01 61", .surveyAnswer(id: 1, headers: [], outcome: .success(ByteBuffer(string: "a")))),
            ("36 01 00 00 02 6e 6f", .surveyAnswer(id: 1, headers: [], outcome: .fault("no"))),
            ("37 01 03 02 01 00", .surveyEnd(id: 1, tally: SurveyTally(asked: 3, answered: 2, faulted: 1, lost: 0))),
        ]
        var survey = ByteBuffer(hex: "35 01 03 69 6e 76 00 01 71 e8 07")
        #expect(try ClientFrame.decode(from: &survey, limits: WireLimits()) == .survey(id: 1, cluster: "inv", headers: [], body: ByteBuffer(string: "q"), timeoutMillis: 1000))
        for (hex, frame) in examples {
            var bytes = ByteBuffer(hex: hex)
            #expect(try RelayFrame.decode(from: &bytes, limits: WireLimits()) == frame)
            var encoded = ByteBuffer()
            frame.encode(into: &encoded)
            #expect(encoded == ByteBuffer(hex: hex))
        }
        // Each travels one way only.
        var backwards = ByteBuffer(hex: "35 01 03 69 6e 76 00 01 71 e8 07")
        #expect(throws: WireError.unknownOpcode(0x35)) { try RelayFrame.decode(from: &backwards, limits: WireLimits()) }
        var answer = ByteBuffer(hex: "37 01 03 02 01 00")
        #expect(throws: WireError.unknownOpcode(0x37)) { try ClientFrame.decode(from: &answer, limits: WireLimits()) }
    }

    @Test("headers beyond their limits, or with an empty key, are refused before they are kept")
    func headerLimits() {
        let limits = WireLimits(maxHeaders: 2, maxHeaderBytes: 12)
        // EVENT s t, then headers: three entries; an empty key; 13 bytes of headers.
        for (hex, error) in [
            ("34 01 73 01 74 03", WireError.tooManyHeaders(count: 3, limit: 2)),
            ("34 01 73 01 74 01 00 01 76", WireError.emptyHeaderKey),
            ("34 01 73 01 74 01 05 6b 6b 6b 6b 6b 05 76 76 76 76 76", WireError.fieldTooLarge(field: "headers", length: 13, limit: 12)),
        ] {
            var bytes = ByteBuffer(hex: hex)
            #expect(throws: error, "\(hex)") { try RelayFrame.decode(from: &bytes, limits: limits) }
        }
        // Incomplete is not invalid: no error until the bytes are there.
        var partial = ByteBuffer(hex: "34 01 73 01 74 01 01 6b")
        #expect((try? RelayFrame.decode(from: &partial, limits: limits)) == .some(nil))
    }
}
