import NIOCore
import Testing

import SkeinFederation
@testable import SkeinMembership

@Suite struct CodecTests {
    static let a = NodeID(high: 0x0102_0304_0506_0708, low: 0x090A_0B0C_0D0E_0F10)
    static let b = NodeID(high: 7, low: 8)
    static let address = MemberAddress(host: "fe80::1", port: 7946)

    static let datagrams: [[DatagramMessage]] = [
        [.ping(seq: 1, target: b)],
        [.pingReq(seq: .max, target: b, address: address)],
        [.ack(seq: 3), .update(.alive(id: b, incarnation: 300, name: "relay-é", address: address, metadataVersion: .max, generation: 1_700_000_000_000))],
        [.update(.alive(id: a, incarnation: 1, name: "a", address: address, metadataVersion: 2, generation: 3, metadata: [1, 0, 0, 0, 7]))],
        [.nack(seq: 4), .update(.suspect(id: b, incarnation: 1, accuser: a)), .update(.dead(id: a, incarnation: 2, accuser: b)), .update(.left(id: b, incarnation: 9))],
    ]

    static let streams: [StreamMessage] = [
        .pushPull(isRequest: true, records: [
            StateRecord(id: a, name: "a", address: address, status: .alive, incarnation: 1, metadataVersion: 2, generation: 3),
            StateRecord(id: b, name: "", address: MemberAddress(host: "", port: 0), status: .left, incarnation: 0, metadataVersion: 0, generation: 0),
        ]),
        .pushPull(isRequest: false, records: []),
        .pushPull(isRequest: true, records: [
            StateRecord(id: a, name: "a", address: address, status: .alive, incarnation: 1, metadataVersion: 2, generation: 3, metadata: [1, 0, 0, 0, 7]),
            StateRecord(id: b, name: "b", address: address, status: .dead, incarnation: 4, metadataVersion: 1, generation: 0),
        ], withMetadata: true),
        .metadataRequest(id: b, version: 5),
        .metadataResponse(id: b, version: 5, body: [1, 0, 0, 0, 0]),
        .metadataResponse(id: b, version: 5, body: nil),
        .ping(seq: 77, target: a),
        .ack(seq: 77),
    ]

    @Test(arguments: datagrams) func datagramRoundTrip(_ messages: [DatagramMessage]) {
        let bytes = Wire.datagram(sender: Self.a, messages)
        #expect(bytes[0] == MembershipWireLimits.version)
        let decoded = Wire.decodeDatagram(bytes)
        #expect(decoded?.sender == Self.a)
        #expect(decoded?.messages == messages)
    }

    @Test(arguments: streams) func streamRoundTrip(_ message: StreamMessage) {
        let bytes = Wire.encodeStream(sender: Self.b, address: Self.address, message)
        let decoded = Wire.decodeStream(bytes, maxMetadataBytes: 1024)
        #expect(decoded?.sender == Self.b)
        #expect(decoded?.address == Self.address)
        #expect(decoded?.message == message)
    }

    @Test func metadataAndNodeIDRoundTrip() throws {
        let metadata = MemberMetadata(zone: "eu-1", clusters: ["db": 3, "thumbnailer": 1], topics: ["a", "b"], load: 42)
        #expect(MemberMetadata.decode(try metadata.encoded(limit: 1024), limit: 1024) == metadata)
        // A gateway's metadata: the networks it reaches, with what each exports (Docs/federation.md §6).
        let gateway = MemberMetadata(
            zone: "eu-1", topics: ["news@us"],
            gateways: ["us": [ExportRule(kinds: [.request, .tunnel], pattern: "db"), ExportRule(kinds: .subscribe, pattern: "news.*")], "asia": []])
        let encoded = try gateway.encoded(limit: 1024)
        #expect(MemberMetadata.decode(encoded, limit: 1024) == gateway)
        #expect(try gateway.encoded(limit: 1024) == encoded, "equal values encode equally")
        for cut in 0..<encoded.count { #expect(MemberMetadata.decode(Array(encoded[..<cut]), limit: 1024) == nil) }
        // skein/2 patterns: format 2, written only when there are patterns (format 1 stays as it was).
        let withPatterns = MemberMetadata(zone: "z", topics: ["a.*"], patterns: ["orders.*", "metrics.>@us"])
        let patternBytes = try withPatterns.encoded(limit: 1024)
        #expect(patternBytes.first == 2 && encoded.first == 1)
        #expect(MemberMetadata.decode(patternBytes, limit: 1024) == withPatterns)
        for cut in 0..<patternBytes.count { #expect(MemberMetadata.decode(Array(patternBytes[..<cut]), limit: 1024) == nil) }
        // Format 2 with an empty pattern list is not how patterns are written: refused.
        #expect(MemberMetadata.decode(Array(encoded.dropFirst()).reduce(into: [2]) { $0.append($1) } + [0], limit: 1024) == nil)
        #expect(NodeID(bytes: Self.a.bytes) == Self.a)
        #expect(Self.a.description == "0102030405060708090a0b0c0d0e0f10")
    }

    /// Every proper prefix of every valid message is rejected (a datagram may legally end after
    /// any whole message, so only cuts inside one count), and so is one trailing junk byte.
    @Test func truncatedAtEveryByteIsRejected() throws {
        for messages in Self.datagrams {
            let bytes = Wire.datagram(sender: Self.a, messages)
            var boundaries: Set<Int> = [Wire.datagramHeaderBytes]
            var offset = Wire.datagramHeaderBytes
            for message in messages {
                offset += Wire.encode(message).count
                boundaries.insert(offset)
            }
            for cut in 0..<bytes.count where !boundaries.contains(cut) {
                #expect(Wire.decodeDatagram(Array(bytes[..<cut])) == nil, "datagram cut at \(cut)")
            }
            #expect(Wire.decodeDatagram(bytes + [0xFF]) == nil)
        }
        for message in Self.streams {
            let bytes = Wire.encodeStream(sender: Self.b, address: Self.address, message)
            for cut in 0..<bytes.count {
                #expect(Wire.decodeStream(Array(bytes[..<cut]), maxMetadataBytes: 1024) == nil, "stream cut at \(cut)")
            }
            #expect(Wire.decodeStream(bytes + [0], maxMetadataBytes: 1024) == nil)
        }
        let metadata = try MemberMetadata(zone: "z", clusters: ["c": 1], topics: ["t"], load: 1).encoded(limit: 1024)
        for cut in 0..<metadata.count { #expect(MemberMetadata.decode(Array(metadata[..<cut]), limit: 1024) == nil) }
    }

    struct Bad: Sendable, CustomTestStringConvertible {
        var name: String
        var bytes: [UInt8]
        var stream: Bool
        var testDescription: String { name }
    }

    static let header = [MembershipWireLimits.version] + a.bytes
    static let streamHeader = [MembershipWireLimits.version, WireType.pushPull] + a.bytes + [0, 0, 0]

    static let bad: [Bad] = [
        Bad(name: "empty datagram", bytes: [], stream: false),
        Bad(name: "wrong version", bytes: [MembershipWireLimits.version - 1] + a.bytes, stream: false),
        Bad(name: "unknown message type", bytes: header + [0x7F], stream: false),
        Bad(name: "host length beyond limit", bytes: header + [WireType.pingReq, 0, 0, 0, 1] + b.bytes + [0xFF, 0x7F], stream: false),
        Bad(name: "host length beyond the datagram", bytes: header + [WireType.pingReq, 0, 0, 0, 1] + b.bytes + [200, 65], stream: false),
        Bad(name: "eleven-byte varint", bytes: header + [WireType.left] + b.bytes + Array(repeating: 0xFF, count: 10) + [1], stream: false),
        Bad(name: "varint overflowing 64 bits", bytes: header + [WireType.left] + b.bytes + Array(repeating: 0xFF, count: 9) + [2], stream: false),
        Bad(name: "invalid UTF-8 name", bytes: header + [WireType.alive] + b.bytes + [0, 0] + Array(repeating: 0, count: 8) + [1, 65, 0, 1, 2, 0xC3, 0x28], stream: false),
        Bad(name: "absurd push-pull record count", bytes: streamHeader + [1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F], stream: true),
        Bad(name: "bad push-pull flag", bytes: streamHeader + [4, 0], stream: true),
        Bad(name: "bad status code", bytes: streamHeader + [1, 1] + b.bytes + [9, 0, 0] + Array(repeating: 0, count: 8) + [0, 0, 0, 0], stream: true),
        Bad(name: "metadata body beyond limit", bytes: [MembershipWireLimits.version, WireType.metadataResponse] + a.bytes + [0, 0, 0] + b.bytes + [1, 1, 0xFF, 0xFF, 0x03], stream: true),
        Bad(name: "unknown stream type", bytes: [MembershipWireLimits.version, 0x66] + a.bytes + [0, 0, 0], stream: true),
    ]

    @Test(arguments: bad) func malformedInputIsDroppedAndCounted(_ bad: Bad) {
        var lone = LoneCore(peers: [2])
        let before = lone.core.stats.malformedDropped
        let out = bad.stream
            ? lone.core.receiveStream(bad.bytes, from: LoneCore.address(2), now: lone.now)
            : lone.core.receiveDatagram(bad.bytes, from: LoneCore.address(2), now: lone.now)
        #expect(out.isEmpty)
        #expect(lone.core.stats.malformedDropped == before + 1)
    }
}
