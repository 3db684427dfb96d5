import NIOCore
import Testing

@testable import SkeinWire

@Suite("Varint (unsigned LEB128)")
struct VarintTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var value: UInt64
        var hex: String
        var testDescription: String { "\(value) ↔ \(hex)" }
    }

    static let cases: [Case] = [
        Case(value: 0, hex: "00"),
        Case(value: 1, hex: "01"),
        Case(value: 127, hex: "7f"),
        Case(value: 128, hex: "80 01"),
        Case(value: 300, hex: "ac 02"),
        // The spec's examples (RELAY-PROTOCOL.md, "Field encodings").
        Case(value: 1000, hex: "e8 07"),
        Case(value: 65536, hex: "80 80 04"),
        Case(value: 4 << 20, hex: "80 80 80 02"),
        Case(value: 64 << 20, hex: "80 80 80 20"),
        // Sizes from the chunking example: 100000 and 34464.
        Case(value: 100_000, hex: "a0 8d 06"),
        Case(value: 34_464, hex: "a0 8d 02"),
        Case(value: 1 << 62, hex: "80 80 80 80 80 80 80 80 40"),
        Case(value: UInt64(Int64.max), hex: "ff ff ff ff ff ff ff ff 7f"),
        Case(value: 1 << 63, hex: "80 80 80 80 80 80 80 80 80 01"),
        Case(value: .max, hex: "ff ff ff ff ff ff ff ff ff 01"),
    ]

    @Test("encodes to the expected bytes", arguments: cases)
    func encode(_ c: Case) {
        var buffer = ByteBuffer()
        buffer.writeVarint(c.value)
        #expect(buffer.hex == c.hex)
        #expect(varintSize(c.value) == buffer.readableBytes)
    }

    @Test("decodes from the expected bytes, consuming exactly them", arguments: cases)
    func decode(_ c: Case) throws {
        var reader = FieldReader(buffer: ByteBuffer(hex: c.hex + " 99"), limits: WireLimits())
        #expect(try reader.varint() == c.value)
        #expect(reader.buffer.hex == "99")
    }

    @Test("a strict prefix is incomplete, not an error", arguments: cases)
    func prefixes(_ c: Case) throws {
        let bytes = hexBytes(c.hex)
        for length in 0..<bytes.count {
            var reader = FieldReader(buffer: ByteBuffer(bytes: bytes.prefix(length)), limits: WireLimits())
            #expect(try reader.varint() == nil)
            #expect(reader.buffer.readerIndex == 0, "an incomplete varint must not be consumed")
        }
    }

    @Test("varints travel inside frames", arguments: cases)
    func insideFrame(_ c: Case) throws {
        // TUNNEL ALLOW is two bare varints in both directions.
        var bytes = ByteBuffer(hex: "0b " + c.hex + " " + c.hex)
        #expect(try ClientFrame.decode(from: &bytes, limits: WireLimits()) == .tunnelAllow(tunnelID: c.value, bytes: c.value))
        #expect(bytes.readableBytes == 0)
    }

    @Test("every power of two and its neighbours round-trip")
    func powersOfTwo() throws {
        var values: [UInt64] = [0, .max]
        for shift in 0..<64 {
            let p = UInt64(1) << shift
            values += [p - 1, p, p + 1]
        }
        for value in values {
            var buffer = ByteBuffer()
            buffer.writeVarint(value)
            #expect(buffer.readableBytes == varintSize(value))
            #expect(buffer.readableBytes <= 10)
            var reader = FieldReader(buffer: buffer, limits: WireLimits())
            #expect(try reader.varint() == value)
            #expect(reader.buffer.readableBytes == 0)
        }
    }

    static let overflows: [String] = [
        // 10th byte above 1: bits beyond 64.
        "ff ff ff ff ff ff ff ff ff 02",
        "ff ff ff ff ff ff ff ff ff 7f",
        "80 80 80 80 80 80 80 80 80 40",
        // 11 bytes: the 10th byte still says "more follows".
        "80 80 80 80 80 80 80 80 80 80 01",
        "ff ff ff ff ff ff ff ff ff ff 01",
        "ff ff ff ff ff ff ff ff ff 81 00",
    ]

    @Test("more than 64 bits is varintOverflow", arguments: overflows)
    func overflow(_ hex: String) {
        var reader = FieldReader(buffer: ByteBuffer(hex: hex), limits: WireLimits())
        #expect(throws: WireError.varintOverflow) { try reader.varint() }
        // The overflow is detected at the 10th byte, before an 11th arrives.
        var tenBytes = FieldReader(buffer: ByteBuffer(bytes: hexBytes(hex).prefix(10)), limits: WireLimits())
        #expect(throws: WireError.varintOverflow) { try tenBytes.varint() }
    }

    @Test("an overflowing varint inside a frame ends decoding with varintOverflow")
    func overflowInFrame() {
        var client = ByteBuffer(hex: "04 ff ff ff ff ff ff ff ff ff 7f 00")
        #expect(throws: WireError.varintOverflow) { try ClientFrame.decode(from: &client, limits: WireLimits()) }
        var relay = ByteBuffer(hex: "0b 07 80 80 80 80 80 80 80 80 80 80 01")
        #expect(throws: WireError.varintOverflow) { try RelayFrame.decode(from: &relay, limits: WireLimits()) }
    }
}
