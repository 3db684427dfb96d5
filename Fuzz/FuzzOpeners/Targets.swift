// libFuzzer target: RecordOpener.next, DatagramOpener.open, HandshakeResponder.receive, the
// peer frame decoder (PeerInbox, what a record's plaintext holds) and the membership datagram
// decoder (Membership.receiveDatagram, what a datagram's plaintext holds) on arbitrary bytes. Built and run by Fuzz/run; see Docs/peer-protocol.md §6. The globals here are
// initialized lazily, on first use, so this works whichever `main` the linker keeps.
//
// Input: [selector][data]. selector % 5 picks the core; the next byte splits `data` into two
// reads, so the fuzzer also explores where reads are cut. Any crash, trap, sanitizer report or
// broken invariant below is a bug.

import NIOCore
import SkeinCrypto
import SkeinMembership
import SkeinWire

#if canImport(Glibc)
import Glibc
#endif

struct Fixture: Sendable {
    static let network = "fuzz-net"
    static let now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static let nowMillis: UInt64 = 1_800_000_000_000
    let keyring = Keyring(primary: try! NetworkKey(bytes: (0..<32).map { UInt8($0) }))
    let initiatorID = [UInt8](repeating: 1, count: 16)
    let responderID = [UInt8](repeating: 2, count: 16)
    let initiatorEphemeral = (0..<32).map { UInt8(64 + $0) }
    let responderEphemeral = (0..<32).map { UInt8(128 + $0) }
    let settings = HandshakeSettings(ciphers: [.chacha20poly1305], records: RecordSettings(maxPlaintext: 4096, rekeyAfterRecords: 2))

    func responder() -> HandshakeResponder {
        HandshakeResponder(network: Self.network, nodeID: responderID, keyring: keyring, ephemeralSecret: responderEphemeral,
                           settings: settings, now: Self.now)
    }

    /// msg1, msg3 and both sessions of one honest exchange with the fixed ephemerals.
    func exchange() -> (msg1: [UInt8], msg3: [UInt8], initiator: PeerSession, responder: PeerSession) {
        var initiator = HandshakeInitiator(network: Self.network, nodeID: initiatorID, keyring: keyring,
                                           ephemeralSecret: initiatorEphemeral, settings: settings, now: Self.now)
        var responder = responder()
        var cache = HandshakeReplayCache()
        let msg1 = initiator.start()
        guard case .send(let msg2) = responder.receive(msg1, replayCache: &cache),
              case .established(let mine, let msg3, _) = initiator.receive(msg2),
              case .established(let theirs, _, _) = responder.receive(msg3, replayCache: &cache)
        else { fatalError("the honest exchange failed") }
        return (msg1, msg3, mine, theirs)
    }
}

let fixture = Fixture()
let honest = fixture.exchange()

func split(_ data: ArraySlice<UInt8>) -> ([UInt8], [UInt8]) {
    guard let cutByte = data.first else { return ([], []) }
    let rest = data.dropFirst()
    let cut = rest.isEmpty ? 0 : Int(cutByte) % (rest.count + 1)
    return (Array(rest.prefix(cut)), Array(rest.dropFirst(cut)))
}

func fuzzRecords(_ first: [UInt8], _ second: [UInt8]) {
    var opener = honest.responder.opener
    var buffer = ByteBuffer(bytes: first)
    do {
        for chunk in [[], second] {
            buffer.writeBytes(chunk)
            while let plaintext = try opener.next(from: &buffer) {
                precondition(plaintext.readableBytes <= fixture.settings.records.maxPlaintext)
            }
        }
        try opener.finish(remaining: buffer)
    } catch {
        // Refusing is the expected outcome for nearly every input.
    }
}

func fuzzDatagram(_ bytes: [UInt8]) {
    var opener = DatagramOpener(keyring: fixture.keyring, network: Fixture.network, replayCapacity: 4)
    if let payload = try? opener.open(bytes, nowMillis: Fixture.nowMillis) {
        // Whatever opened once must never open twice.
        precondition(payload.count == bytes.count - DatagramSealer.overhead)
        precondition((try? opener.open(bytes, nowMillis: Fixture.nowMillis)) == nil, "a datagram opened twice")
    }
}

func fuzzHandshake(_ first: [UInt8], _ second: [UInt8]) {
    var responder = fixture.responder()
    var cache = HandshakeReplayCache(capacity: 2)
    for chunk in [first, second] {
        switch responder.receive(chunk, replayCache: &cache) {
        case .needMoreBytes, .send:
            continue
        case .established(var session, _, let leftover):
            // Only the honest confirmation can get here.
            precondition(first + second == honest.msg1 + honest.msg3 + leftover, "a session from forged bytes")
            var buffer = ByteBuffer(bytes: leftover)
            _ = try? session.opener.next(from: &buffer)
            return
        case .rejected:
            return
        }
    }
    _ = responder.expire(now: Fixture.now + .seconds(60))
}

/// Record plaintexts as a peer sends them: each read is one record's contents.
func fuzzFrames(_ first: [UInt8], _ second: [UInt8]) {
    var inbox = PeerInbox(limits: WireLimits(maxMessageSize: 1 << 16, maxStringSize: 1 << 10))
    var frames: [PeerFrame] = []
    for record in [first, second] {
        do {
            try inbox.receive(record: ByteBuffer(bytes: record), into: &frames)
        } catch {
            return  // refused: the link would end here
        }
        precondition(inbox.reassemblyBytes <= inbox.maxFrameSize, "reassembly beyond its limit")
    }
    // Whatever decoded must encode and decode back to itself.
    var outbox = PeerOutbox(maxRecordPlaintext: 4096)
    for frame in frames { outbox.enqueue(frame) }
    var again = PeerInbox(limits: WireLimits(maxMessageSize: 1 << 16, maxStringSize: 1 << 10))
    var decoded: [PeerFrame] = []
    var record = ByteBuffer()
    while outbox.nextRecord(into: &record) {
        try! again.receive(record: record, into: &decoded)
        record.clear()
    }
    precondition(decoded.count == frames.count, "a decoded frame did not survive re-encoding")
}

/// A membership core fed one arbitrary datagram plaintext and one stream message.
func fuzzMembership(_ first: [UInt8], _ second: [UInt8]) {
    var core = try! Membership(
        id: NodeID(high: 1, low: 1), name: "fuzz", address: MemberAddress(host: "10.0.0.1", port: 7946),
        metadata: MemberMetadata(), settings: .lan, seed: 1, now: Fixture.now)
    let from = MemberAddress(host: "10.0.0.2", port: 7946)
    _ = core.receiveDatagram(first, from: from, now: Fixture.now)
    _ = core.receiveStream(second, from: from, now: Fixture.now)
    _ = core.tick(now: Fixture.now + .seconds(5))
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let selector = bytes.first else { return 0 }
    let body = bytes.dropFirst()
    let (first, second) = split(body)
    switch selector % 5 {
    case 0: fuzzRecords(first, second)
    case 1: fuzzDatagram(Array(body))
    case 2: fuzzHandshake(first, second)
    case 3: fuzzFrames(first, second)
    default: fuzzMembership(first, second)
    }
    return 0
}

/// Writes seed inputs (honest records, a datagram, the handshake) into $SKEIN_FUZZ_SEEDS.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    guard let directory = getenv("SKEIN_FUZZ_SEEDS").map({ String(cString: $0) }) else { return 0 }
    var sealer = honest.initiator.sealer
    var records = ByteBuffer()
    for text in ["one", "two records", "three, across a rekey"] { sealer.seal(Array(text.utf8), into: &records) }
    let recordBytes = Array(records.readableBytesView)
    let datagram = DatagramSealer(keyring: fixture.keyring, network: Fixture.network)
        .seal(Array("gossip".utf8), nowMillis: Fixture.nowMillis, nonce: [UInt8](repeating: 9, count: 24))
    let seeds: [(String, [UInt8])] = [
        ("records", [0, 7] + recordBytes),
        ("datagram", [1] + datagram),
        ("handshake-msg1", [2, 0] + honest.msg1),
        ("handshake-full", [2, UInt8(honest.msg1.count)] + honest.msg1 + honest.msg3 + recordBytes),
        ("frames", [3, 0] + framesSeed()),
    ]
    for (name, bytes) in seeds {
        let fd = open(directory + "/seed-" + name, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { continue }
        _ = write(fd, bytes, bytes.count)
        close(fd)
    }
    return 0
}

/// One record's plaintext holding a frame of every kind.
func framesSeed() -> [UInt8] {
    var outbox = PeerOutbox(maxRecordPlaintext: 4096)
    for frame: PeerFrame in [
        .hello(address: "10.0.0.1:55556", name: "a"), .ping(token: 1), .membership(ByteBuffer(bytes: [1, 2, 3])),
        .request(id: 1, cluster: "echo", remainingMillis: 100, flags: [], body: ByteBuffer(string: "hi")),
        .reply(id: 1, outcome: .fault("no")), .publish(topic: "t", body: ByteBuffer(string: "e")),
        .tunnelConfirm(id: 2, outcome: .built(farID: 3, chunkLimit: 4)), .tunnelData(id: 3, sizeOrContinuation: 1, chunk: ByteBuffer(bytes: [0])),
    ] { outbox.enqueue(frame) }
    var record = ByteBuffer()
    outbox.nextRecord(into: &record)
    return Array(record.readableBytesView)
}
