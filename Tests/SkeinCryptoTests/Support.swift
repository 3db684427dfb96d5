import NIOCore
@testable import SkeinCrypto

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Fixed keys and identities, so every test run sees the same bytes.
enum Fixture {
    static let keyA = try! NetworkKey(bytes: (0..<32).map { UInt8($0) })
    static let keyB = try! NetworkKey(bytes: (0..<32).map { UInt8(100 + $0) })
    static let keyC = try! NetworkKey(bytes: (0..<32).map { UInt8(200 - $0) })
    static let initiatorID = [UInt8](repeating: 0x11, count: 16)
    static let responderID = [UInt8](repeating: 0x22, count: 16)
    static let initiatorEphemeral = (0..<32).map { UInt8(40 + $0) }
    static let responderEphemeral = (0..<32).map { UInt8(90 + $0) }
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
    static let network = "test-net"
}

func makeInitiator(
    network: String = Fixture.network, keyring: Keyring = Keyring(primary: Fixture.keyA),
    ephemeral: [UInt8] = Fixture.initiatorEphemeral, settings: HandshakeSettings = HandshakeSettings()
) -> HandshakeInitiator {
    HandshakeInitiator(network: network, nodeID: Fixture.initiatorID, keyring: keyring, ephemeralSecret: ephemeral,
                       settings: settings, now: Fixture.start)
}

func makeResponder(
    network: String = Fixture.network, keyring: Keyring = Keyring(primary: Fixture.keyA),
    ephemeral: [UInt8] = Fixture.responderEphemeral, settings: HandshakeSettings = HandshakeSettings()
) -> HandshakeResponder {
    HandshakeResponder(network: network, nodeID: Fixture.responderID, keyring: keyring, ephemeralSecret: ephemeral,
                       settings: settings, now: Fixture.start)
}

/// What one side's step was, reduced to something `#expect` can compare.
enum Outcome: Equatable {
    case needMoreBytes
    case send([UInt8])
    case established(send: [UInt8], leftover: [UInt8])
    case rejected(HandshakeRejection, send: [UInt8])

    init(_ step: HandshakeStep) {
        switch step {
        case .needMoreBytes: self = .needMoreBytes
        case .send(let bytes): self = .send(bytes)
        case .established(_, let send, let leftover): self = .established(send: send, leftover: leftover)
        case .rejected(let why, let send): self = .rejected(why, send: send)
        }
    }
}

extension HandshakeStep {
    var sent: [UInt8]? { if case .send(let bytes) = self { bytes } else { nil } }
    var session: PeerSession? { if case .established(let session, _, _) = self { session } else { nil } }
    var establishedSend: [UInt8]? { if case .established(_, let send, _) = self { send } else { nil } }
    var leftover: [UInt8]? { if case .established(_, _, let leftover) = self { leftover } else { nil } }
    var rejection: HandshakeRejection? { if case .rejected(let why, _) = self { why } else { nil } }
}

/// The three messages of a successful exchange, and both sessions.
struct Exchange {
    var msg1: [UInt8], msg2: [UInt8], msg3: [UInt8]
    var initiatorSession: PeerSession, responderSession: PeerSession
}

func runExchange(settings: HandshakeSettings = HandshakeSettings()) -> Exchange? {
    var initiator = makeInitiator(settings: settings)
    var responder = makeResponder(settings: settings)
    var cache = HandshakeReplayCache()
    let msg1 = initiator.start()
    guard let msg2 = responder.receive(msg1, replayCache: &cache).sent else { return nil }
    let step = initiator.receive(msg2)
    guard let mine = step.session, let msg3 = step.establishedSend else { return nil }
    guard let theirs = responder.receive(msg3, replayCache: &cache).session else { return nil }
    return Exchange(msg1: msg1, msg2: msg2, msg3: msg3, initiatorSession: mine, responderSession: theirs)
}

func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBuffer(bytes: bytes) }

/// Creates a fresh file with `contents` and `mode` in a private temporary directory.
final class TemporaryDirectory {
    let path: String
    private var files: [String] = []

    init() {
        var template = Array("/tmp/skein-crypto-tests-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func write(_ name: String, _ contents: String, mode: mode_t = 0o600) -> String {
        let file = path + "/" + name
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, mode)
        precondition(fd >= 0)
        let bytes = Array(contents.utf8)
        precondition(Glibc.write(fd, bytes, bytes.count) == bytes.count)
        precondition(fchmod(fd, mode) == 0)
        close(fd)
        files.append(file)
        return file
    }

    deinit {
        for file in files { unlink(file) }
        rmdir(path)
    }
}
