import NIOCore
import SkeinWire
import Testing

@Suite("Names decoded through a cache")
struct NameCacheTests {
    static func publish(_ topic: [UInt8], _ event: [UInt8]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(Opcode.publish.rawValue)
        buffer.writeVarint(UInt64(topic.count))
        buffer.writeBytes(topic)
        buffer.writeVarint(UInt64(event.count))
        buffer.writeBytes(event)
        return buffer
    }

    @Test("repeated and alternating names decode to the same strings as without a cache")
    func repeatedNames() throws {
        var names = NameCache()
        let topics = ["a", "bench.topic.long-enough-to-allocate", "", "é-ünïcode-名前", "a", "x", "y", "z", "w", "a"]
        for round in 0..<3 {
            for topic in topics {
                var buffer = Self.publish(Array(topic.utf8), [UInt8(round)])
                let frame = try ClientFrame.decode(from: &buffer, limits: WireLimits(), names: &names)
                #expect(frame == .publish(topic: topic, event: ByteBuffer(bytes: [UInt8(round)])))
                #expect(buffer.readableBytes == 0)
            }
        }
    }

    static let invalid: [[UInt8]] = [
        [0xff],
        [0x61, 0x80],
        [0xf0, 0x90, 0x80],  // a 4-byte sequence cut short: repaired as one 3-byte U+FFFD
        [0xed, 0xa0, 0x80],  // a surrogate
        [0xc0, 0xaf],  // overlong
        [0xef, 0xbf, 0xbd, 0xff],
    ]

    @Test("invalid UTF-8 is refused, cached or not", arguments: invalid)
    func invalidNames(bytes: [UInt8]) {
        var names = NameCache()
        for _ in 0..<2 {
            var buffer = Self.publish(bytes, [1])
            #expect(throws: WireError.invalidUTF8(field: "topic")) {
                _ = try ClientFrame.decode(from: &buffer, limits: WireLimits(), names: &names)
            }
        }
        // The replacement character itself is valid.
        var valid = Self.publish([0xef, 0xbf, 0xbd], [1])
        #expect((try? ClientFrame.decode(from: &valid, limits: WireLimits(), names: &names)) == .publish(topic: "\u{FFFD}", event: ByteBuffer(bytes: [1])))
    }

    @Test("a name split across reads decodes once it is complete")
    func splitName() throws {
        var names = NameCache()
        let whole = Self.publish(Array("topic".utf8), [7, 7])
        for cut in 0..<whole.readableBytes {
            var first = whole.getSlice(at: 0, length: cut)!
            #expect(try ClientFrame.decode(from: &first, limits: WireLimits(), names: &names) == nil)
            var all = whole
            #expect(try ClientFrame.decode(from: &all, limits: WireLimits(), names: &names) == .publish(topic: "topic", event: ByteBuffer(bytes: [7, 7])))
        }
    }
}
