import NIOCore
import SkeinFederation
import SkeinWire
import Testing

@Suite("Peer frames")
struct PeerFramingTests {
    static let everyKind: [PeerFrame] = [
        .hello(address: "127.0.0.1:55556", name: "relay-a"),
        .ping(token: 0x0102_0304_0506_0708),
        .pong(token: .max),
        .goodbye(reason: "relay stopping"),
        .membership(ByteBuffer(bytes: [1, 2, 3, 0, 255])),
        .membership(ByteBuffer()),
        .request(id: 300, cluster: "echo", remainingMillis: 1500, flags: [], body: ByteBuffer(string: "hello")),
        .request(id: 0, cluster: "", remainingMillis: 0, flags: [], body: ByteBuffer()),
        .reply(id: 300, outcome: .success(ByteBuffer(string: "world"))),
        .reply(id: 1, outcome: .fault("boom")),
        .reply(id: 2, outcome: .timedOut),
        .headed(headers: [Header("traceparent", "00-ab-cd-01")], frame: .request(id: 7, cluster: "c", remainingMillis: 9, flags: .failFast, body: ByteBuffer(string: "q"))),
        .headed(headers: [Header("k", "v"), Header("k", "")], frame: .reply(id: 7, outcome: .success(ByteBuffer(string: "a")))),
        .headed(headers: [Header("k", "v")], frame: .publish(topic: "t", body: ByteBuffer())),
        .headed(headers: [Header("k", "v")], frame: .broadcast(cluster: "b", body: ByteBuffer(string: "x"))),
        .headed(headers: [Header("k", "v")], frame: .event(topic: "t@us", body: ByteBuffer(string: "x"))),
        .survey(id: 7, cluster: "inv", remainingMillis: 1000, body: ByteBuffer(string: "q")),
        .headed(headers: [Header("k", "v")], frame: .survey(id: 0, cluster: "db@us", remainingMillis: 0, body: ByteBuffer())),
        .surveyAnswer(id: 7, outcome: .success(ByteBuffer(string: "a"))),
        .headed(headers: [Header("k", "v")], frame: .surveyAnswer(id: .max, outcome: .fault("f"))),
        .surveyEnd(id: 7, tally: SurveyTally(asked: 3, answered: 2, faulted: 1, lost: 0)),
        .reply(id: 3, outcome: .noMembers),
        .reply(id: 4, outcome: .memberLost),
        .reply(id: 5, outcome: .refused(.notExported, "db is not exported")),
        .reply(id: 6, outcome: .refused(.other(200), "")),
        .request(id: 9, cluster: "db@us", remainingMillis: 7, flags: .failFast, body: ByteBuffer(string: "q")),
        .gateway(network: "us", exports: [ExportRule(kinds: [.request, .tunnel], pattern: "db"), ExportRule(kinds: .subscribe, pattern: "news.*")]),
        .gateway(network: "", exports: []),
        .interest(topics: ["news.eu", "news.us", ""], patterns: ["news.*", "metrics.>"]),
        .interest(topics: [], patterns: []),
        .hold(stream: .publish(topic: "news"), leaseMillis: 1000),
        .hold(stream: .broadcast(cluster: "all"), leaseMillis: 0),
        .hold(stream: .event(topic: "news@us"), leaseMillis: .max),
        .release(stream: .publish(topic: "news")),
        .release(stream: .broadcast(cluster: "")),
        .event(topic: "news", body: ByteBuffer(string: "flash")),
        .broadcast(cluster: "echo", body: ByteBuffer(string: "all")),
        .publish(topic: "news", body: ByteBuffer(string: "flash")),
        .tunnelOpen(id: 7, cluster: "files", remainingMillis: 5000, flags: []),
        .tunnelConfirm(id: 7, outcome: .built(farID: 99, chunkLimit: 65536)),
        .tunnelConfirm(id: 8, outcome: .failed("timed out")),
        .tunnelConfirm(id: 9, outcome: .refused(.networkUnreachable, "us")),
        .tunnelOpen(id: 10, cluster: "db@us", remainingMillis: 1, flags: .failFast),
        .tunnelAllowance(id: 7, bytes: 1 << 20),
        .tunnelClose(id: 7, reason: "done"),
        .tunnelData(id: 7, sizeOrContinuation: 11, chunk: ByteBuffer(string: "hello tunnel")),
    ]

    /// Runs frames through an outbox and an inbox, checking every record's size.
    static func roundTrip(_ frames: [PeerFrame], maxRecord: Int = 65_536) throws -> (frames: [PeerFrame], records: Int) {
        var outbox = PeerOutbox(maxRecordPlaintext: maxRecord)
        for frame in frames { outbox.enqueue(frame) }
        var inbox = PeerInbox()
        var received: [PeerFrame] = []
        var records = 0
        var record = ByteBuffer()
        while outbox.nextRecord(into: &record) {
            #expect(record.readableBytes <= maxRecord)
            #expect(record.readableBytes > 0)
            records += 1
            try inbox.receive(record: record, into: &received)
            record.clear()
        }
        #expect(outbox.isEmpty)
        #expect(inbox.reassemblyBytes == 0)
        return (received, records)
    }

    @Test("every frame kind round-trips through one record")
    func everyKindRoundTrips() throws {
        let (received, records) = try Self.roundTrip(Self.everyKind)
        #expect(records == 1)
        // Classes are reordered (control first), but order within a class is kept.
        for trafficClass in PeerTrafficClass.allCases {
            #expect(received.filter { $0.trafficClass == trafficClass } == Self.everyKind.filter { $0.trafficClass == trafficClass })
        }
    }

    @Test("the encoded header is the type byte, a varint length and the payload")
    func layout() throws {
        var buffer = ByteBuffer()
        PeerFrame.ping(token: 1).encode(into: &buffer)
        #expect(Array(buffer.readableBytesView) == [0x01, 0x08, 0, 0, 0, 0, 0, 0, 0, 1])
        buffer.clear()
        PeerFrame.request(id: 300, cluster: "a", remainingMillis: 2, flags: [], body: ByteBuffer(bytes: [9])).encode(into: &buffer)
        #expect(Array(buffer.readableBytesView) == [0x10, 0x07, 0xac, 0x02, 0x01, 0x61, 0x02, 0x00, 0x09])
        buffer.clear()
        // Docs/federation.md §5: GATEWAY us, exporting request|tunnel on db.
        PeerFrame.gateway(network: "us", exports: [ExportRule(kinds: [.request, .tunnel], pattern: "db")]).encode(into: &buffer)
        #expect(Array(buffer.readableBytesView) == [0x06, 0x08, 0x02, 0x75, 0x73, 0x01, 0x05, 0x02, 0x64, 0x62])
        buffer.clear()
        // Docs/federation.md §5: INTEREST in topic news.eu and pattern orders.*.
        PeerFrame.interest(topics: ["news.eu"], patterns: ["orders.*"]).encode(into: &buffer)
        #expect(buffer.hexDump(format: .plain) == "07 13 01 07 6e 65 77 73 2e 65 75 01 08 6f 72 64 65 72 73 2e 2a")
    }

    @Test("HEADERS as Docs/peer-protocol.md §5 shows it; only requests, replies, broadcasts, publishes and events carry headers")
    func headedFrames() throws {
        var buffer = ByteBuffer()
        PeerFrame.publish(topic: "t", body: ByteBuffer(bytes: [0xff])).with([Header("k", "v")]).encode(into: &buffer)
        #expect(buffer.hexDump(format: .plain) == "15 09 01 01 6b 01 76 13 01 74 ff")
        #expect(PeerFrame.publish(topic: "t", body: ByteBuffer()).with([]) == .publish(topic: "t", body: ByteBuffer()))
        #expect(PeerFrame.headed(headers: [], frame: .event(topic: "t", body: ByteBuffer())).trafficClass == .interactive)
        for bad: [UInt8] in [
            [0x15, 0x03, 0x00, 0x23, 0x00],  // TUNNEL CLOSE carries none
            [0x15, 0x03, 0x00, 0x15, 0x00],  // nor does HEADERS itself
            [0x15, 0x04, 0x01, 0x00, 0x00, 0x13],  // an empty key
            [0x15, 0x03, 0x00, 0x13, 0x05],  // the inner frame ends inside a field
        ] {
            var inbox = PeerInbox()
            var frames: [PeerFrame] = []
            #expect(throws: PeerFrameError.self, "\(bad)") { try inbox.receive(record: ByteBuffer(bytes: bad), into: &frames) }
        }
    }

    @Test("SURVEY, SURVEY ANSWER and SURVEY END as Docs/peer-protocol.md §5 shows them")
    func surveyFrames() throws {
        let examples: [(PeerFrame, String)] = [
            (.survey(id: 7, cluster: "inv", remainingMillis: 1000, body: ByteBuffer(string: "q")), "16 08 07 03 69 6e 76 e8 07 71"),
            (.surveyAnswer(id: 7, outcome: .success(ByteBuffer(string: "a"))), "17 03 07 00 61"),
            (.surveyEnd(id: 7, tally: SurveyTally(asked: 3, answered: 2, faulted: 1, lost: 0)), "18 05 07 03 02 01 00"),
        ]
        for (frame, hex) in examples {
            var buffer = ByteBuffer()
            frame.encode(into: &buffer)
            #expect(buffer.hexDump(format: .plain) == hex)
            #expect(frame.trafficClass == .interactive)
        }
        for bad: [UInt8] in [
            [0x17, 0x02, 0x07, 0x02],  // an answer is a success (0) or a fault (1)
            [0x18, 0x04, 0x07, 0x03, 0x02, 0x01],  // an end has four counts
        ] {
            var inbox = PeerInbox()
            var frames: [PeerFrame] = []
            #expect(throws: PeerFrameError.self, "\(bad)") { try inbox.receive(record: ByteBuffer(bytes: bad), into: &frames) }
        }
    }

    @Test("HOLD and RELEASE as Docs/peer-protocol.md §5 shows them; a stream kind other than BROADCAST, PUBLISH or EVENT ends the link")
    func flowControlFrames() throws {
        var buffer = ByteBuffer()
        PeerFrame.hold(stream: .publish(topic: "news"), leaseMillis: 1000).encode(into: &buffer)
        #expect(Array(buffer.readableBytesView) == [0x08, 0x08, 0x13, 0x04, 0x6e, 0x65, 0x77, 0x73, 0xe8, 0x07])
        buffer.clear()
        PeerFrame.release(stream: .broadcast(cluster: "all")).encode(into: &buffer)
        #expect(Array(buffer.readableBytesView) == [0x09, 0x05, 0x12, 0x03, 0x61, 0x6c, 0x6c])
        #expect(PeerFrame.hold(stream: .event(topic: "t"), leaseMillis: 1).trafficClass == .control)
        for bad: [UInt8] in [
            [0x08, 0x04, 0x10, 0x01, 0x61, 0x01],  // REQUEST is no stream
            [0x09, 0x03, 0x00, 0x01, 0x61],  // nor is 0
            [0x08, 0x03, 0x13, 0x01, 0x61],  // a HOLD without its lease
            [0x09, 0x04, 0x13, 0x01, 0x61, 0x00],  // a trailing byte
        ] {
            var inbox = PeerInbox()
            var frames: [PeerFrame] = []
            #expect(throws: PeerFrameError.self, "\(bad)") { try inbox.receive(record: ByteBuffer(bytes: bad), into: &frames) }
        }
    }

    @Test("an export list or interest set longer than its payload could hold is refused before allocation")
    func hostileCounts() {
        var inbox = PeerInbox()
        for kind: UInt8 in [0x06, 0x07] {
            // A count of 2^40 in a few bytes.
            var record = ByteBuffer(bytes: [kind, 0x07] + (kind == 0x06 ? [0x00] : []) + [0x80, 0x80, 0x80, 0x80, 0x80, 0x20])
            if kind == 0x07 { record = ByteBuffer(bytes: [kind, 0x06, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20]) }
            var frames: [PeerFrame] = []
            #expect(throws: PeerFrameError.self) { try inbox.receive(record: record, into: &frames) }
        }
    }

    @Test("a message larger than a record is fragmented and reassembled", arguments: [1 << 20, 65_537, 300_000])
    func fragmentation(size: Int) throws {
        let big = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let frames: [PeerFrame] = [
            .tunnelData(id: 1, sizeOrContinuation: UInt64(size), chunk: big),
            .request(id: 5, cluster: "c", remainingMillis: 10, flags: [], body: big),
        ]
        let (received, records) = try Self.roundTrip(frames)
        #expect(Set(received.map(\.kind)) == [.tunnelData, .request])
        #expect(received.count == 2)
        #expect(records >= 2 * size / 65_536)
        for frame in received {
            switch frame {
            case .tunnelData(_, _, let chunk), .request(_, _, _, _, let chunk): #expect(chunk == big)
            default: Issue.record("unexpected \(frame)")
            }
        }
    }

    @Test("control and requests queued behind bulk data leave in the very next record")
    func priorityOverBulk() throws {
        var outbox = PeerOutbox()
        let chunk = ByteBuffer(repeating: 7, count: 60_000)
        for i in 0..<64 { outbox.enqueue(.tunnelData(id: 1, sizeOrContinuation: UInt64(i), chunk: chunk)) }
        var inbox = PeerInbox()
        var record = ByteBuffer()
        var frames: [PeerFrame] = []
        // Two records of bulk leave first.
        for _ in 0..<2 {
            let wrote = outbox.nextRecord(into: &record)
            #expect(wrote)
            try inbox.receive(record: record, into: &frames)
            record.clear()
        }
        outbox.enqueue(.ping(token: 42))
        outbox.enqueue(.request(id: 9, cluster: "echo", remainingMillis: 100, flags: [], body: ByteBuffer(string: "now")))
        frames.removeAll()
        let wrote = outbox.nextRecord(into: &record)
            #expect(wrote)
        try inbox.receive(record: record, into: &frames)
        #expect(frames.contains(.ping(token: 42)))
        #expect(frames.contains(.request(id: 9, cluster: "echo", remainingMillis: 100, flags: [], body: ByteBuffer(string: "now"))))
    }

    @Test("bulk data keeps a share of every record while requests flood the link")
    func bulkIsNotStarved() throws {
        var outbox = PeerOutbox()
        outbox.enqueue(.tunnelData(id: 1, sizeOrContinuation: 0, chunk: ByteBuffer(repeating: 1, count: 1 << 20)))
        for i in 0..<20_000 { outbox.enqueue(.publish(topic: "t", body: ByteBuffer(repeating: UInt8(i & 0xff), count: 64))) }
        var record = ByteBuffer()
        var inbox = PeerInbox()
        var frames: [PeerFrame] = []
        var recordsWithBulkProgress = 0
        for _ in 0..<10 {
            let before = inbox.reassemblyBytes
            let wrote = outbox.nextRecord(into: &record)
            #expect(wrote)
            try inbox.receive(record: record, into: &frames)
            if inbox.reassemblyBytes > before { recordsWithBulkProgress += 1 }
            record.clear()
        }
        #expect(recordsWithBulkProgress == 10)
        #expect(frames.count > 10 * 500)
    }

    @Test("empty outbox writes nothing")
    func emptyOutbox() {
        var outbox = PeerOutbox()
        var record = ByteBuffer()
        let wrote = outbox.nextRecord(into: &record)
        #expect(!wrote)
        #expect(record.readableBytes == 0)
    }

    @Test("queued bytes are counted per class")
    func queuedBytes() {
        var outbox = PeerOutbox()
        outbox.enqueue(.tunnelData(id: 1, sizeOrContinuation: 0, chunk: ByteBuffer(repeating: 0, count: 1000)))
        #expect(outbox.queuedBytes(.bulk) >= 1000)
        #expect(outbox.queuedBytes(.control) == 0)
        #expect(outbox.queuedFrames == 1)
    }

    static let badRecords: [(String, [UInt8], PeerFrameError)] = [
        ("unknown type", [0x7f, 0x00], .unknownType(0x7f)),
        ("length past the record", [0x01, 0x08, 0, 0], .truncated),
        ("length missing", [0x01], .truncated),
        ("length overflow", [0x01] + Array(repeating: 0xff, count: 10) + [0x01], .badLength),
        ("ping too short", [0x01, 0x02, 0, 0], .malformed(.ping, "payload ends inside a field")),
        ("ping trailing bytes", [0x01, 0x09] + Array(repeating: 0, count: 9), .malformed(.ping, "1 trailing bytes")),
        ("reply bad outcome", [0x11, 0x02, 0x01, 0x09], .malformed(.reply, "unknown reply outcome 9")),
        ("tunnel confirm bad outcome", [0x21, 0x02, 0x01, 0x05], .malformed(.tunnelConfirm, "unknown tunnel outcome 5")),
        ("invalid UTF-8 name", [0x12, 0x02, 0x01, 0xff], .malformed(.broadcast, "cluster is not valid UTF-8")),
        ("fragment continued by another kind", [0x92, 0x01, 0x00, 0x13, 0x01, 0x00], .fragmentMismatch(expected: .broadcast, found: .publish)),
    ]

    @Test("bad records are refused with a reason", arguments: badRecords)
    func badRecord(name: String, bytes: [UInt8], expected: PeerFrameError) {
        var inbox = PeerInbox()
        var frames: [PeerFrame] = []
        #expect(throws: expected, "\(name)") {
            try inbox.receive(record: ByteBuffer(bytes: bytes), into: &frames)
        }
    }

    @Test("a reassembled frame over the limit is refused before it grows further")
    func reassemblyLimit() throws {
        var inbox = PeerInbox(maxFrameSize: 1000)
        var frames: [PeerFrame] = []
        let fragment: [UInt8] = [0xb0, 0x80, 0x03] + Array(repeating: 0, count: 384)  // tunnelData, continues, 384 bytes
        try inbox.receive(record: ByteBuffer(bytes: fragment), into: &frames)
        try inbox.receive(record: ByteBuffer(bytes: fragment), into: &frames)
        #expect(throws: PeerFrameError.frameTooLarge(length: 1152, limit: 1000)) {
            try inbox.receive(record: ByteBuffer(bytes: fragment), into: &frames)
        }
    }

    @Test("a single frame over the limit is refused")
    func frameLimit() {
        var inbox = PeerInbox(maxFrameSize: 10)
        var frames: [PeerFrame] = []
        #expect(throws: PeerFrameError.frameTooLarge(length: 11, limit: 10)) {
            try inbox.receive(record: ByteBuffer(bytes: [0x04, 0x0b] + Array(repeating: 0, count: 11)), into: &frames)
        }
    }

    @Test("fragments of different classes interleave and both reassemble")
    func interleavedClasses() throws {
        // A membership (control) fragment, a tunnel (bulk) fragment, then both finish.
        let record: [UInt8] = [0x84, 0x02, 1, 2, 0xb0, 0x03, 7, 0, 0xaa, 0x04, 0x01, 3, 0x30, 0x01, 0xbb]
        var inbox = PeerInbox()
        var frames: [PeerFrame] = []
        try inbox.receive(record: ByteBuffer(bytes: record), into: &frames)
        #expect(frames == [
            .membership(ByteBuffer(bytes: [1, 2, 3])),
            .tunnelData(id: 7, sizeOrContinuation: 0, chunk: ByteBuffer(bytes: [0xaa, 0xbb])),
        ])
    }
}
