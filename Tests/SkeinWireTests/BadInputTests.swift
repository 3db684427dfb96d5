import NIOCore
import SkeinWire
import Testing

/// Malformed streams (RELAY-PROTOCOL.md, "Bad input"). Each listing is as much of the stream as
/// the decoder needs to see to reject it: limits are enforced on the length varint, before the
/// bytes it announces arrive.
@Suite("Bad input")
struct BadInputTests {
    struct Bad: Sendable, CustomTestStringConvertible {
        var name: String
        var hex: String
        var limits = WireLimits()
        var error: WireError
        var testDescription: String { name }
    }

    static let maxMessage = 32 << 20
    static let maxString = 64 << 10

    static let client: [Bad] = [
        Bad(name: "unknown opcode 0e", hex: "0e", error: .unknownOpcode(0x0e)),
        Bad(name: "unknown opcode 20 (skein/1 range, not negotiated)", hex: "20 00", error: .unknownOpcode(0x20)),
        Bad(name: "unknown opcode ff", hex: "ff ff ff", error: .unknownOpcode(0xff)),
        Bad(name: "DENY travels relay → binding only", hex: "01 00 00", error: .unknownOpcode(0x01)),
        Bad(name: "invalid bool in REPLY", hex: "05 00 02 00", error: .invalidBool(2)),
        Bad(name: "invalid bool ff in REPLY", hex: "05 07 ff", error: .invalidBool(0xff)),
        Bad(
            name: "spec: BROADCAST with a 2^62 length", hex: "03 04 65 63 68 6f 80 80 80 80 80 80 80 80 40",
            error: .fieldTooLarge(field: "broadcast message", length: 1 << 62, limit: maxMessage)),
        Bad(
            name: "REQUEST body one byte above the maximum", hex: "04 00 04 65 63 68 6f 81 80 80 10",
            error: .fieldTooLarge(field: "request", length: UInt64(maxMessage) + 1, limit: maxMessage)),
        Bad(
            name: "REPLY body of 2^64-1", hex: "05 00 01 ff ff ff ff ff ff ff ff ff 01",
            error: .fieldTooLarge(field: "reply", length: .max, limit: maxMessage)),
        Bad(
            name: "PUBLISH event above the maximum", hex: "08 01 74 81 80 80 10",
            error: .fieldTooLarge(field: "event", length: UInt64(maxMessage) + 1, limit: maxMessage)),
        Bad(
            name: "TUNNEL TRANSFER chunk above a 64 KiB limit", hex: "0c 07 00 81 80 04",
            limits: WireLimits(maxMessageSize: 65536),
            error: .fieldTooLarge(field: "tunnel chunk", length: 65537, limit: 65536)),
        Bad(
            name: "topic above the string limit", hex: "06 81 80 04",
            error: .fieldTooLarge(field: "topic", length: UInt64(maxString) + 1, limit: maxString)),
        Bad(
            name: "INIT magic of 2^62 bytes", hex: "00 80 80 80 80 80 80 80 80 40",
            error: .fieldTooLarge(field: "magic", length: 1 << 62, limit: maxString)),
        Bad(
            name: "cluster above a small string limit", hex: "04 00 05",
            limits: WireLimits(maxStringSize: 4),
            error: .fieldTooLarge(field: "cluster", length: 5, limit: 4)),
        Bad(name: "varint overflow in REQUEST id", hex: "04 ff ff ff ff ff ff ff ff ff 02", error: .varintOverflow),
        Bad(name: "varint overflow in a length", hex: "08 80 80 80 80 80 80 80 80 80 80 01", error: .varintOverflow),
        Bad(name: "invalid UTF-8 topic (c3 28)", hex: "06 02 c3 28", error: .invalidUTF8(field: "topic")),
        Bad(name: "invalid UTF-8 magic (ff)", hex: "00 01 ff", error: .invalidUTF8(field: "magic")),
        Bad(name: "overlong UTF-8 cluster (c0 af)", hex: "03 02 c0 af 00", error: .invalidUTF8(field: "cluster")),
        Bad(name: "UTF-16 surrogate in a fault (ed a0 80)", hex: "05 00 00 03 ed a0 80", error: .invalidUTF8(field: "fault")),
        Bad(name: "truncated UTF-8 sequence in a topic", hex: "07 01 e2", error: .invalidUTF8(field: "topic")),
        Bad(name: "invalid UTF-8 version", hex: "00 00 02 fe fe", error: .invalidUTF8(field: "version")),
    ]

    static let relay: [Bad] = [
        Bad(name: "unknown opcode 0e", hex: "0e", error: .unknownOpcode(0x0e)),
        Bad(name: "SUBSCRIBE travels binding → relay only", hex: "06 01 74", error: .unknownOpcode(0x06)),
        Bad(name: "UNSUBSCRIBE travels binding → relay only", hex: "07 01 74", error: .unknownOpcode(0x07)),
        Bad(name: "invalid timedOut bool in REPLY", hex: "05 00 02", error: .invalidBool(2)),
        Bad(name: "invalid success bool in REPLY", hex: "05 00 00 05", error: .invalidBool(5)),
        Bad(name: "invalid timedOut bool in TUNNEL CONFIRM", hex: "0a 07 80", error: .invalidBool(0x80)),
        Bad(
            name: "BROADCAST of 2^62 bytes", hex: "03 80 80 80 80 80 80 80 80 40",
            error: .fieldTooLarge(field: "broadcast message", length: 1 << 62, limit: maxMessage)),
        Bad(
            name: "reason above the string limit", hex: "02 81 80 04",
            error: .fieldTooLarge(field: "reason", length: UInt64(maxString) + 1, limit: maxString)),
        Bad(name: "invalid UTF-8 CLOSE reason", hex: "02 01 ff", error: .invalidUTF8(field: "reason")),
        Bad(name: "invalid UTF-8 DENY magic", hex: "01 01 c3", error: .invalidUTF8(field: "magic")),
        Bad(name: "varint overflow in TUNNEL ALLOW", hex: "0b 00 ff ff ff ff ff ff ff ff ff 7f", error: .varintOverflow),
    ]

    @Test("binding → relay", arguments: client)
    func clientBad(_ bad: Bad) {
        var bytes = ByteBuffer(hex: bad.hex)
        #expect(throws: bad.error) { try ClientFrame.decode(from: &bytes, limits: bad.limits) }
    }

    @Test("relay → binding", arguments: relay)
    func relayBad(_ bad: Bad) {
        var bytes = ByteBuffer(hex: bad.hex)
        #expect(throws: bad.error) { try RelayFrame.decode(from: &bytes, limits: bad.limits) }
    }

    @Test("every byte that is not an opcode is rejected at once, in both directions")
    func everyUnknownOpcode() {
        for op in UInt8(0x0e)...0xff {
            // 0x30–0x33 are skein/2's frames with headers, both ways (Docs/skein-2.md), 0x34
            // its EVENT and 0x35–0x37 its surveys: a bare opcode is an incomplete frame there
            // (one way, the other way an unknown opcode, checked in `oneWayFrames`).
            guard !(0x30...0x37).contains(op) else { continue }
            var c = ByteBuffer(bytes: [op])
            #expect(throws: WireError.unknownOpcode(op)) { try ClientFrame.decode(from: &c, limits: WireLimits()) }
            // 0x20–0x22 are skein/1's relay → binding frames (Docs/skein-1.md).
            guard !(0x20...0x22).contains(op) else { continue }
            var r = ByteBuffer(bytes: [op])
            #expect(throws: WireError.unknownOpcode(op)) { try RelayFrame.decode(from: &r, limits: WireLimits()) }
        }
    }

    @Test("skein/2's one-way frames are unknown opcodes the other way")
    func oneWayFrames() {
        for op: UInt8 in [0x34, 0x36, 0x37] {
            var c = ByteBuffer(bytes: [op, 0x00])
            #expect(throws: WireError.unknownOpcode(op)) { try ClientFrame.decode(from: &c, limits: WireLimits()) }
        }
        for op: UInt8 in [0x33, 0x35] {
            var r = ByteBuffer(bytes: [op, 0x00])
            #expect(throws: WireError.unknownOpcode(op)) { try RelayFrame.decode(from: &r, limits: WireLimits()) }
        }
    }

    @Test("skein/1's failure frames never travel binding → relay")
    func failureFramesAreRelayOnly() {
        for op: UInt8 in [0x20, 0x21, 0x22] {
            var c = ByteBuffer(bytes: [op, 0x00, 0x01, 0x00])
            #expect(throws: WireError.unknownOpcode(op)) { try ClientFrame.decode(from: &c, limits: WireLimits()) }
        }
    }

    @Test("every bool byte other than 00 and 01 is rejected")
    func everyInvalidBool() {
        for byte in UInt8(2)...0xff {
            var c = ByteBuffer(bytes: [0x05, 0x00, byte])
            #expect(throws: WireError.invalidBool(byte)) { try ClientFrame.decode(from: &c, limits: WireLimits()) }
            var r = ByteBuffer(bytes: [0x05, 0x00, byte])
            #expect(throws: WireError.invalidBool(byte)) { try RelayFrame.decode(from: &r, limits: WireLimits()) }
        }
    }

    @Test("lengths exactly at the limits are accepted, and wait for their bytes")
    func atTheLimit() throws {
        // A body of exactly maxMessageSize: the header alone is just incomplete.
        var body = ByteBuffer(hex: "04 00 04 65 63 68 6f 80 80 80 10")
        #expect(try ClientFrame.decode(from: &body, limits: WireLimits()) == nil)

        let limits = WireLimits(maxMessageSize: 4, maxStringSize: 3)
        var small = ByteBuffer(hex: "08 03 61 62 63 04 01 02 03 04")
        #expect(try ClientFrame.decode(from: &small, limits: limits) == .publish(topic: "abc", event: ByteBuffer(bytes: [1, 2, 3, 4])))
        var tooBig = ByteBuffer(hex: "08 03 61 62 63 05")
        #expect(throws: WireError.fieldTooLarge(field: "event", length: 5, limit: 4)) {
            try ClientFrame.decode(from: &tooBig, limits: limits)
        }
    }

    @Test("errors read well in a CLOSE reason")
    func descriptions() {
        #expect(WireError.unknownOpcode(0x0e).description == "unknown opcode 0xe")
        #expect(WireError.invalidBool(2).description == "invalid bool byte 0x2")
        #expect(WireError.varintOverflow.description == "varint longer than 64 bits")
        #expect(
            WireError.fieldTooLarge(field: "event", length: 5, limit: 4).description
                == "event of 5 bytes exceeds the limit of 4 bytes")
        #expect(WireError.invalidUTF8(field: "topic").description == "topic is not valid UTF-8")
    }
}
