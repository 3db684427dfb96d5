/// Append-only byte writer for the membership wire format (see `Docs/membership.md`).
struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 64) {
        bytes.reserveCapacity(capacity)
    }

    /// Continues `bytes` (which is left empty until `bytes` is handed back), without a copy.
    init(taking bytes: inout [UInt8]) {
        self.bytes = bytes
        bytes = []
    }

    mutating func u8(_ value: UInt8) { bytes.append(value) }

    mutating func u16(_ value: UInt16) {
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        bytes.append(UInt8(truncatingIfNeeded: value))
    }

    mutating func u32(_ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    mutating func u64(_ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    /// Unsigned LEB128: 1 byte below 128, at most 10.
    mutating func varint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    mutating func id(_ value: NodeID) {
        u64(value.high)
        u64(value.low)
    }

    /// Varint length, then UTF-8.
    mutating func string(_ value: String) {
        let utf8 = Array(value.utf8)
        varint(UInt64(utf8.count))
        bytes.append(contentsOf: utf8)
    }

    mutating func address(_ value: MemberAddress) {
        string(value.host)
        u16(value.port)
    }

    mutating func raw(_ value: [UInt8]) { bytes.append(contentsOf: value) }

    /// Varint length (0: none), then the encoded metadata body.
    mutating func inlineMetadata(_ body: [UInt8]?) {
        varint(UInt64(body?.count ?? 0))
        if let body { raw(body) }
    }

    static func varintSize(_ value: UInt64) -> Int {
        var size = 1
        var rest = value
        while rest >= 0x80 {
            rest >>= 7
            size += 1
        }
        return size
    }
}

/// Bounds-checked reader: every read returns nil instead of trapping, so malformed input can be
/// dropped and counted.
struct ByteReader {
    let bytes: [UInt8]
    var offset: Int
    let end: Int

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        self.offset = 0
        self.end = bytes.count
    }

    var remaining: Int { end - offset }
    var isAtEnd: Bool { offset >= end }

    mutating func u8() -> UInt8? {
        guard offset < end else { return nil }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        var value: UInt32 = 0
        for index in 0..<4 { value = value << 8 | UInt32(bytes[offset + index]) }
        offset += 4
        return value
    }

    mutating func u64() -> UInt64? {
        guard remaining >= 8 else { return nil }
        var value: UInt64 = 0
        for index in 0..<8 { value = value << 8 | UInt64(bytes[offset + index]) }
        offset += 8
        return value
    }

    mutating func varint() -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard let byte = u8() else { return nil }
            // The tenth byte may only carry the top bit of a UInt64.
            if shift == 63 && byte > 1 { return nil }
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
            if shift > 63 { return nil }
        }
    }

    /// A varint that must fit `limit`; guards every count and length before it is used.
    mutating func length(max limit: Int) -> Int? {
        guard let value = varint(), value <= UInt64(limit) else { return nil }
        return Int(value)
    }

    mutating func id() -> NodeID? {
        guard let high = u64(), let low = u64() else { return nil }
        return NodeID(high: high, low: low)
    }

    mutating func raw(_ count: Int) -> [UInt8]? {
        guard count >= 0, remaining >= count else { return nil }
        defer { offset += count }
        return Array(bytes[offset..<(offset + count)])
    }

    /// An inline metadata body of at most `limit` bytes; empty when none was carried.
    mutating func inlineMetadata(max limit: Int) -> [UInt8]? {
        guard let count = length(max: limit) else { return nil }
        return raw(count)
    }

    /// A string whose UTF-8 length is at most `limit` and which is valid UTF-8.
    mutating func string(max limit: Int) -> String? {
        guard let count = length(max: limit), remaining >= count else { return nil }
        defer { offset += count }
        return String(validating: bytes[offset..<(offset + count)], as: UTF8.self)
    }

    mutating func address() -> MemberAddress? {
        guard let host = string(max: MembershipWireLimits.maxHostBytes), let port = u16() else { return nil }
        return MemberAddress(host: host, port: port)
    }
}

/// Limits every decoder enforces; encoders enforce the same ones where user input enters.
public enum MembershipWireLimits {
    /// The leading byte of every datagram and stream message.
    public static let version: UInt8 = 2
    /// A member's host (name or literal) in UTF-8 bytes.
    public static let maxHostBytes = 255
    /// A member's name in UTF-8 bytes.
    public static let maxNameBytes = 255
    /// One cluster or topic name, or the zone, in metadata.
    public static let maxMetadataStringBytes = 1024
    /// Member records in one push-pull message.
    public static let maxPushPullRecords = 1 << 20
}
