import NIOCore
import SkeinWire
import Testing

/// The outbox's record packing (Docs/peer-protocol.md §5.2): frames encoded once into their
/// class's queue, runs of whole frames handed out straight from it, fragments only where the
/// rule says.
@Suite("Peer outbox")
struct PeerOutboxTests {
    /// Every record an outbox produces, each unpacked into its raw frame headers.
    struct Piece: Equatable {
        var kind: UInt8
        var continues: Bool
        var length: Int
    }

    static func records(_ frames: [PeerFrame], maxRecord: Int = 65_536) -> [[Piece]] {
        var outbox = PeerOutbox(maxRecordPlaintext: maxRecord)
        for frame in frames { outbox.enqueue(frame) }
        var records: [[Piece]] = []
        while outbox.nextRecord({ plaintext in
            var pieces: [Piece] = []
            var record = ByteBuffer(bytes: plaintext)
            while record.readableBytes > 0 {
                let type = record.readInteger(as: UInt8.self)!
                var length = 0
                var shift = 0
                while true {
                    let byte = record.readInteger(as: UInt8.self)!
                    length |= Int(byte & 0x7f) << shift
                    shift += 7
                    if byte & 0x80 == 0 { break }
                }
                record.moveReaderIndex(forwardBy: length)
                pieces.append(Piece(kind: type & 0x7f, continues: type & 0x80 != 0, length: length))
            }
            records.append(pieces)
        }) {}
        return records
    }

    static func unpack(_ frames: [PeerFrame], maxRecord: Int = 65_536) throws -> [PeerFrame] {
        var outbox = PeerOutbox(maxRecordPlaintext: maxRecord)
        for frame in frames { outbox.enqueue(frame) }
        var inbox = PeerInbox()
        var received: [PeerFrame] = []
        var record = ByteBuffer()
        while outbox.nextRecord(into: &record) {
            #expect(record.readableBytes <= maxRecord)
            try inbox.receive(record: record, into: &received)
            record.clear()
        }
        #expect(inbox.reassemblyBytes == 0)
        return received
    }

    static func event(_ i: Int, size: Int) -> PeerFrame {
        .publish(topic: "bench.topic.long-enough-to-allocate", body: ByteBuffer(repeating: UInt8(truncatingIfNeeded: i), count: size))
    }

    @Test("a flood of one class leaves as records of whole frames, none split to fill a tail")
    func wholeFrameRuns() throws {
        let frames = (0..<1000).map { Self.event($0, size: 1024) }
        let records = Self.records(frames)
        #expect(records.allSatisfy { $0.allSatisfy { !$0.continues } })
        #expect(records.map(\.count).reduce(0, +) == 1000)
        // Full records: the next frame would not have fitted.
        let frameSize = 1 + 2 + (1 + 35) + 1024
        for record in records.dropLast() { #expect(record.count == 65_536 / frameSize) }
        #expect(try Self.unpack(frames) == frames)
    }

    @Test("64 KiB tunnel chunks travel one to a record, whole")
    func bulkChunks() throws {
        let chunk = ByteBuffer(repeating: 3, count: 65_536)
        let frames = (0..<20).map { PeerFrame.tunnelData(id: 9, sizeOrContinuation: UInt64($0), chunk: chunk) }
        let records = Self.records(frames, maxRecord: 66_560)
        #expect(records.count == 20)
        #expect(records.allSatisfy { $0.count == 1 && !$0[0].continues })
        #expect(try Self.unpack(frames, maxRecord: 66_560) == frames)
    }

    /// A frame of exactly `whole` bytes (header included) with a body of the right size.
    static func frame(whole: Int) -> PeerFrame {
        // tunnelData(id 1, size 0): payload = 2 + body; header = 1 + varint(payload).
        var body = whole - 1 - 2
        while 1 + varintSize(UInt64(body + 2)) + body + 2 > whole { body -= 1 }
        return .tunnelData(id: 1, sizeOrContinuation: 0, chunk: ByteBuffer(repeating: 0xab, count: body))
    }

    @Test("frames around the record size: whole when they fit a record, split only when larger",
          arguments: [-2, -1, 0, 1, 2, 300])
    func recordBoundary(delta: Int) throws {
        let maxRecord = 4096
        let frame = Self.frame(whole: maxRecord + delta)
        let frames = [frame, frame, frame]
        let records = Self.records(frames, maxRecord: maxRecord)
        if delta <= 0 {
            #expect(records.count == 3)
            #expect(records.allSatisfy { $0.count == 1 && !$0[0].continues })
        } else {
            // Larger than a record: fragments fill every record but the last.
            #expect(records.contains { $0.contains { $0.continues } })
            for record in records.dropLast() {
                let bytes = record.map { 1 + varintSize(UInt64($0.length)) + $0.length }.reduce(0, +)
                #expect(bytes > maxRecord - 8)
            }
        }
        #expect(try Self.unpack(frames, maxRecord: maxRecord) == frames)
    }

    static let mixed: [PeerFrame] = [
        .ping(token: 1),
        .publish(topic: "t", body: ByteBuffer(repeating: 1, count: 3000)),
        .tunnelData(id: 1, sizeOrContinuation: 5, chunk: ByteBuffer(repeating: 2, count: 9000)),
        .membership(ByteBuffer(repeating: 3, count: 2500)),
        .request(id: 4, cluster: "c", remainingMillis: 9, flags: [], body: ByteBuffer(repeating: 4, count: 1500)),
        .tunnelClose(id: 1, reason: "done"),
        .reply(id: 4, outcome: .success(ByteBuffer(repeating: 5, count: 700))),
        .goodbye(reason: "bye"),
    ]

    /// Every order of enqueueing: classes may be reordered, frames within a class never are.
    static let orders: [[Int]] = {
        func permutations(_ items: [Int]) -> [[Int]] {
            guard items.count > 1 else { return [items] }
            return items.indices.flatMap { i -> [[Int]] in
                var rest = items
                let first = rest.remove(at: i)
                return permutations(rest).map { [first] + $0 }
            }
        }
        // 5 of the 8 frames in every order (120), the other 3 appended.
        return permutations([0, 1, 2, 3, 4]).map { $0 + [5, 6, 7] }
    }()

    @Test("every enqueue order round-trips, in order within each class", arguments: [4096, 8192, 65_536])
    func everyOrder(maxRecord: Int) throws {
        for order in Self.orders {
            let frames = order.map { Self.mixed[$0] }
            let received = try Self.unpack(frames, maxRecord: maxRecord)
            #expect(received.count == frames.count)
            for trafficClass in PeerTrafficClass.allCases {
                #expect(received.filter { $0.trafficClass == trafficClass } == frames.filter { $0.trafficClass == trafficClass })
            }
        }
    }

    @Test("frames enqueued between records keep their class order")
    func interleavedEnqueue() throws {
        var outbox = PeerOutbox(maxRecordPlaintext: 4096)
        var inbox = PeerInbox()
        var sent: [PeerFrame] = []
        var received: [PeerFrame] = []
        var record = ByteBuffer()
        for i in 0..<200 {
            let frame: PeerFrame = i % 3 == 0
                ? .tunnelData(id: 1, sizeOrContinuation: UInt64(i), chunk: ByteBuffer(repeating: UInt8(i & 0xff), count: 1000 + i * 37))
                : Self.event(i, size: 100 + i * 11)
            outbox.enqueue(frame)
            sent.append(frame)
            if i % 7 == 0, outbox.nextRecord(into: &record) {
                try inbox.receive(record: record, into: &received)
                record.clear()
            }
        }
        while outbox.nextRecord(into: &record) {
            try inbox.receive(record: record, into: &received)
            record.clear()
        }
        for trafficClass in PeerTrafficClass.allCases {
            #expect(received.filter { $0.trafficClass == trafficClass } == sent.filter { $0.trafficClass == trafficClass })
        }
    }

    @Test("payloadSize is what encodePayload writes, for every kind")
    func payloadSizes() {
        for frame in PeerFramingTests.everyKind {
            var buffer = ByteBuffer()
            frame.encodePayload(into: &buffer)
            #expect(buffer.readableBytes == frame.payloadSize, "\(frame.kind)")
            var whole = ByteBuffer()
            frame.encode(into: &whole)
            #expect(whole.readableBytes == 1 + varintSize(UInt64(frame.payloadSize)) + frame.payloadSize)
        }
    }
}
