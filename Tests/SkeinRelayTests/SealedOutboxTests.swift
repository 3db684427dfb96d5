import NIOCore
import SkeinCrypto
import SkeinWire
import Testing

/// The link's send path without sockets: frames through `PeerOutbox`, each record sealed
/// straight from the outbox's queues, opened and unpacked by the other end.
@Suite("Sealed outbox")
struct SealedOutboxTests {
    static func sessions(records: RecordSettings) throws -> (PeerSession, PeerSession) {
        let keyring = Keyring(primary: NetworkKey.generate())
        let settings = HandshakeSettings(records: records)
        var cache = HandshakeReplayCache()
        var initiator = HandshakeInitiator(
            network: "test", nodeID: Array(repeating: 1, count: 16), keyring: keyring,
            ephemeralSecret: SecureRandom.bytes(32), settings: settings, now: .now())
        var responder = HandshakeResponder(
            network: "test", nodeID: Array(repeating: 2, count: 16), keyring: keyring,
            ephemeralSecret: SecureRandom.bytes(32), settings: settings, now: .now())
        guard case .send(let m2) = responder.receive(initiator.start(), replayCache: &cache),
            case .established(let a, let m3, _) = initiator.receive(m2),
            case .established(let b, _, _) = responder.receive(m3, replayCache: &cache)
        else {
            Issue.record("handshake did not complete")
            throw CancellationError()
        }
        return (a, b)
    }

    @Test("frames survive sealing straight from the queues, across rekeys", arguments: [1, 2, 3, 1 << 24])
    func rekeyBoundary(rekeyAfterRecords: UInt64) throws {
        let settings = RecordSettings(maxPlaintext: 8192, rekeyAfterRecords: rekeyAfterRecords)
        var (a, b) = try Self.sessions(records: settings)
        var outbox = PeerOutbox(maxRecordPlaintext: settings.maxPlaintext)
        var inbox = PeerInbox()
        var sent: [PeerFrame] = []
        var received: [PeerFrame] = []
        var wire = ByteBuffer()
        for round in 0..<6 {
            // A mix of runs of whole frames (sealed from the queue) and records that mix
            // classes or carry fragments (gathered first).
            for i in 0..<(round * 7 + 1) {
                let frame: PeerFrame = i % 5 == 4
                    ? .tunnelData(id: 1, sizeOrContinuation: UInt64(i), chunk: ByteBuffer(repeating: UInt8(i), count: 3000 * round + 1))
                    : .publish(topic: "events", body: ByteBuffer(repeating: UInt8(round), count: 100 * i))
                outbox.enqueue(frame)
                sent.append(frame)
            }
            if round % 2 == 0 { outbox.enqueue(.ping(token: UInt64(round))); sent.append(.ping(token: UInt64(round))) }
            while outbox.nextRecord({ a.sealer.seal($0, into: &wire) }) {}
            while let record = try b.opener.next(from: &wire) {
                try inbox.receive(record: record, into: &received)
            }
        }
        #expect(wire.readableBytes == 0)
        for trafficClass in PeerTrafficClass.allCases {
            #expect(received.filter { $0.trafficClass == trafficClass } == sent.filter { $0.trafficClass == trafficClass })
        }
    }
}
