import CSodium
import NIOCore

// The peer-link handshake (Docs/peer-protocol.md §1): Noise NNpsk0 with the network key as the
// pre-shared key, plus a third message confirming the final keys, built from X25519 and BLAKE2b.
//
//   msg1  I → R  header(magic, version, network, key id, node id), e_i, ciphers, tag1
//   msg2  R → I  header(magic, version, node id), e_r, cipher, tag2      (after DH(e_r, e_i))
//   msg3  I → R  tag3 under a key split from the final chaining key
//
// Each is framed by a u16 big-endian length. A frame of length 0 is the refusal: it says "no"
// and nothing else, whatever the reason.

public struct HandshakeSettings: Sendable {
    public var protocolVersion: UInt8
    /// The largest handshake message body accepted, checked on its length prefix before any of
    /// it is buffered. The largest valid message (msg1 with a 255-byte network name and 8
    /// ciphers) is 342 bytes.
    public var maxMessageBytes: Int
    /// The whole handshake must finish within this time of `init(..., now:)`.
    public var timeout: TimeAmount
    /// The ciphers offered (initiator, in preference order) or accepted (responder).
    public var ciphers: [PeerCipher]
    /// The record layer of the established session.
    public var records: RecordSettings

    public init(
        protocolVersion: UInt8 = 1, maxMessageBytes: Int = 512, timeout: TimeAmount = .seconds(5),
        ciphers: [PeerCipher] = PeerCipher.preferred, records: RecordSettings = RecordSettings()
    ) {
        self.protocolVersion = protocolVersion
        self.maxMessageBytes = maxMessageBytes
        self.timeout = timeout
        self.ciphers = ciphers
        self.records = records
    }
}

/// What the handshake asks its shell to do next.
public enum HandshakeStep: Sendable {
    /// Wait for more bytes.
    case needMoreBytes
    /// Write these bytes and keep going.
    case send([UInt8])
    /// Done: write `send` (it may be empty), then use the session; `leftover` bytes already
    /// belong to the record stream.
    case established(PeerSession, send: [UInt8], leftover: [UInt8])
    /// Failed: write `send` (it may be empty), then close.
    case rejected(HandshakeRejection, send: [UInt8])
}

/// Why a handshake failed. Only the side that detected it knows; the peer is sent the refusal,
/// which it reports as `.refusedByPeer`.
public enum HandshakeRejection: Error, Equatable, Sendable, CustomStringConvertible {
    /// Responder: the initiator names another network.
    case wrongNetwork
    /// Responder: the initiator's key id is not in this keyring.
    case unknownKey(KeyID)
    /// A tag did not verify: the peer does not hold the key it named, or bytes were altered.
    case badProof
    /// The peer speaks this other protocol version.
    case wrongVersion(UInt8)
    case malformed(String)
    /// A message's length prefix announced this many bytes, over `maxMessageBytes`.
    case oversized(Int)
    /// Responder: an exact copy of a first message seen recently.
    case replayed
    case timedOut
    /// Responder: none of the initiator's ciphers is acceptable here.
    case noCommonCipher
    /// The peer sent the refusal. It does not say why, by design.
    case refusedByPeer

    public var description: String {
        switch self {
        case .wrongNetwork: "the peer belongs to another network"
        case .unknownKey(let id): "the peer uses key \(id), which is not in the keyring"
        case .badProof: "the peer failed to prove it holds the network key"
        case .wrongVersion(let v): "the peer speaks peer protocol version \(v)"
        case .malformed(let why): "malformed handshake: \(why)"
        case .oversized(let n): "a \(n)-byte handshake message is over the limit"
        case .replayed: "a replayed handshake"
        case .timedOut: "the handshake timed out"
        case .noCommonCipher: "no cipher in common with the peer"
        case .refusedByPeer: "the peer refused the handshake"
        }
    }
}

/// A link's established state: who the peer is, and the two record directions.
public struct PeerSession: Sendable {
    public let peerNodeID: [UInt8]
    /// The network key the link was authenticated with (the initiator's primary).
    public let keyID: KeyID
    public let cipher: PeerCipher
    /// The final handshake hash, equal on both ends: a channel binding for the link.
    public let handshakeHash: [UInt8]
    public var sealer: RecordSealer
    public var opener: RecordOpener
}

/// The initiating side of a peer-link handshake. Sends msg1, verifies msg2, sends msg3.
public struct HandshakeInitiator: Sendable {
    private enum State { case initial, awaitingReply(SymmetricState), finished }

    private let network: [UInt8]
    private let nodeID: [UInt8]
    private let keyring: Keyring
    private var ephemeralSecret: [UInt8]
    private let ephemeralPublic: [UInt8]
    private let settings: HandshakeSettings
    private let ciphers: [PeerCipher]
    public let deadline: NIODeadline
    private var state = State.initial
    private var framer = HandshakeFramer()

    /// `nodeID` is 16 bytes; `ephemeralSecret` is 32 fresh random bytes, used for this
    /// handshake only. The handshake must finish by `now + settings.timeout`.
    public init(network: String, nodeID: [UInt8], keyring: Keyring, ephemeralSecret: [UInt8], settings: HandshakeSettings, now: NIODeadline) {
        precondition(nodeID.count == Handshake.nodeIDSize, "a node id is 16 bytes")
        precondition((1...255).contains(network.utf8.count), "a network name is 1 to 255 bytes")
        precondition((2...65_535).contains(settings.maxMessageBytes))
        self.network = Array(network.utf8)
        self.nodeID = nodeID
        self.keyring = keyring
        self.ephemeralSecret = ephemeralSecret
        self.ephemeralPublic = X25519.publicKey(secret: ephemeralSecret)
        self.settings = settings
        self.ciphers = Array(settings.ciphers.filter(\.isAvailable).prefix(Handshake.maxCiphers))
        precondition(!ciphers.isEmpty, "no cipher offered is available")
        self.deadline = now + settings.timeout
    }

    /// The framed msg1 to write first.
    public mutating func start() -> [UInt8] {
        guard case .initial = state else { preconditionFailure("start() called twice") }
        var header = Handshake.magic + [settings.protocolVersion, UInt8(network.count)] + network
        header += keyring.primaryID.bytes + nodeID
        let cipherList = [UInt8(ciphers.count)] + ciphers.map(\.rawValue)

        var symmetric = SymmetricState()
        symmetric.mixKeyAndHash(Handshake.psk(keyring.primary))
        symmetric.mixHash(header)
        symmetric.mixHash(ephemeralPublic)
        symmetric.mixKey(ephemeralPublic)
        symmetric.mixHash(cipherList)
        let tag = symmetric.tag()
        symmetric.mixHash(tag)
        state = .awaitingReply(symmetric)
        return Handshake.frame(header + ephemeralPublic + cipherList + tag)
    }

    public mutating func receive(_ bytes: [UInt8]) -> HandshakeStep {
        switch state {
        case .initial: preconditionFailure("receive(_:) before start()")
        case .finished: return .rejected(.malformed("the handshake is over"), send: [])
        case .awaitingReply: break
        }
        framer.append(bytes)
        let body: [UInt8]
        switch framer.next(limit: settings.maxMessageBytes) {
        case .needMore: return .needMoreBytes
        case .refusal: return finish(.refusedByPeer, tellPeer: false)
        case .oversized(let n): return finish(.oversized(n))
        case .message(let message): body = message
        }
        guard framer.isEmpty else { return finish(.malformed("bytes after the reply, before our confirmation")) }
        guard case .awaitingReply(var symmetric) = state else { preconditionFailure("unreachable: checked above") }
        // From here on this is the only copy of the handshake secrets, so wiping them is real.
        state = .finished
        defer { symmetric.wipe() }

        // msg2: magic 4, version 1, node id 16, ephemeral 32, cipher 1, tag 16.
        guard body.count >= 5, Array(body[0..<4]) == Handshake.magic else {
            return finish(.malformed("not a Skein peer handshake"))
        }
        guard body[4] == settings.protocolVersion else { return finish(.wrongVersion(body[4])) }
        guard body.count == Handshake.replySize else { return finish(.malformed("a reply of \(body.count) bytes")) }
        let header = Array(body[0..<21])
        let peerNodeID = Array(body[5..<21])
        let peerEphemeral = Array(body[21..<53])
        let cipherByte = body[53]
        let tag = Array(body[54..<70])

        symmetric.mixHash(header)
        symmetric.mixHash(peerEphemeral)
        symmetric.mixKey(peerEphemeral)
        guard var shared = X25519.sharedSecret(secret: ephemeralSecret, peerPublic: peerEphemeral) else {
            return finish(.malformed("the peer's ephemeral key is of low order"))
        }
        symmetric.mixKey(shared)
        wipe(&shared)
        symmetric.mixHash([cipherByte])
        guard constantTimeEqual(symmetric.tag(), tag) else { return finish(.badProof) }
        guard let cipher = PeerCipher(rawValue: cipherByte), ciphers.contains(cipher) else {
            return finish(.malformed("the peer chose cipher \(cipherByte), which was not offered"))
        }
        symmetric.mixHash(tag)
        var keys = symmetric.split()
        let confirmation = Blake2b.hash(symmetric.h, key: keys.confirm, outputLength: Handshake.tagSize)
        let session = PeerSession(
            peerNodeID: peerNodeID, keyID: keyring.primaryID, cipher: cipher, handshakeHash: symmetric.h,
            sealer: RecordSealer(cipher: cipher, key: &keys.initiatorToResponder, settings: settings.records),
            opener: RecordOpener(cipher: cipher, key: &keys.responderToInitiator, settings: settings.records))
        keys.wipe()
        finishState()
        return .established(session, send: Handshake.frame(confirmation), leftover: [])
    }

    /// Rejects with `.timedOut` once `now` reaches the deadline; nil before, or once finished.
    public mutating func expire(now: NIODeadline) -> HandshakeStep? {
        if case .finished = state { return nil }
        guard now >= deadline else { return nil }
        return finish(.timedOut)
    }

    private mutating func finish(_ rejection: HandshakeRejection, tellPeer: Bool = true) -> HandshakeStep {
        finishState()
        return .rejected(rejection, send: tellPeer ? Handshake.refusal : [])
    }

    private mutating func finishState() {
        wipe(&ephemeralSecret)
        framer = HandshakeFramer()
        state = .finished
    }
}

/// The responding side of a peer-link handshake. Verifies msg1, sends msg2, and establishes the
/// session only when msg3 verifies, so a replayed msg1 never yields a session.
public struct HandshakeResponder: Sendable {
    private struct Pending {
        var peerNodeID: [UInt8]
        var keyID: KeyID
        var cipher: PeerCipher
        var handshakeHash: [UInt8]
        var keys: SplitKeys
        var confirmation: [UInt8]
    }
    private enum State { case awaitingHello, awaitingConfirmation(Pending), finished }

    private let network: [UInt8]
    private let nodeID: [UInt8]
    private let keyring: Keyring
    private var ephemeralSecret: [UInt8]
    private let ephemeralPublic: [UInt8]
    private let settings: HandshakeSettings
    public let deadline: NIODeadline
    private var state = State.awaitingHello
    private var framer = HandshakeFramer()

    public init(network: String, nodeID: [UInt8], keyring: Keyring, ephemeralSecret: [UInt8], settings: HandshakeSettings, now: NIODeadline) {
        precondition(nodeID.count == Handshake.nodeIDSize, "a node id is 16 bytes")
        precondition((1...255).contains(network.utf8.count), "a network name is 1 to 255 bytes")
        precondition((2...65_535).contains(settings.maxMessageBytes))
        self.network = Array(network.utf8)
        self.nodeID = nodeID
        self.keyring = keyring
        self.ephemeralSecret = ephemeralSecret
        self.ephemeralPublic = X25519.publicKey(secret: ephemeralSecret)
        self.settings = settings
        self.deadline = now + settings.timeout
    }

    /// Feeds bytes from the initiator. `replayCache` is shared by all of a relay's responders:
    /// an exact copy of a recent, valid msg1 is refused at once with `.replayed`.
    public mutating func receive(_ bytes: [UInt8], replayCache: inout HandshakeReplayCache) -> HandshakeStep {
        if case .finished = state { return .rejected(.malformed("the handshake is over"), send: []) }
        framer.append(bytes)
        let body: [UInt8]
        switch framer.next(limit: settings.maxMessageBytes) {
        case .needMore: return .needMoreBytes
        case .refusal: return finish(.refusedByPeer, tellPeer: false)
        case .oversized(let n): return finish(.oversized(n))
        case .message(let message): body = message
        }
        switch state {
        case .awaitingHello: return hello(body, replayCache: &replayCache)
        case .awaitingConfirmation(var pending):
            // From here on this is the only copy of the session keys, so wiping them is real.
            state = .finished
            defer { pending.keys.wipe() }
            return confirmation(body, pending: &pending)
        case .finished: preconditionFailure("unreachable: checked above")
        }
    }

    private mutating func hello(_ body: [UInt8], replayCache: inout HandshakeReplayCache) -> HandshakeStep {
        guard framer.isEmpty else { return finish(.malformed("bytes after the first message, before our reply")) }
        // msg1: magic 4, version 1, name length 1, name n, key id 8, node id 16, ephemeral 32,
        // cipher count 1, ciphers c, tag 16.
        guard body.count >= 6, Array(body[0..<4]) == Handshake.magic else {
            return finish(.malformed("not a Skein peer handshake"))
        }
        guard body[4] == settings.protocolVersion else { return finish(.wrongVersion(body[4])) }
        let nameCount = Int(body[5])
        let cipherCountAt = 6 + nameCount + KeyID.size + Handshake.nodeIDSize + X25519.size
        guard nameCount >= 1, body.count > cipherCountAt else { return finish(.malformed("a first message of \(body.count) bytes")) }
        let cipherCount = Int(body[cipherCountAt])
        guard (1...Handshake.maxCiphers).contains(cipherCount), body.count == cipherCountAt + 1 + cipherCount + Handshake.tagSize else {
            return finish(.malformed("a first message of \(body.count) bytes"))
        }
        let idAt = 6 + nameCount
        let header = Array(body[0..<(idAt + KeyID.size + Handshake.nodeIDSize)])
        guard constantTimeEqual(Array(body[6..<idAt]), network) else { return finish(.wrongNetwork) }
        let keyID = KeyID(bytes: body[idAt..<(idAt + KeyID.size)])!
        guard let key = keyring.key(for: keyID) else { return finish(.unknownKey(keyID)) }
        let peerNodeID = Array(body[(idAt + KeyID.size)..<(idAt + KeyID.size + Handshake.nodeIDSize)])
        let peerEphemeral = Array(body[(cipherCountAt - X25519.size)..<cipherCountAt])
        let cipherList = Array(body[cipherCountAt..<(cipherCountAt + 1 + cipherCount)])
        let tag = Array(body[(body.count - Handshake.tagSize)...])

        var symmetric = SymmetricState()
        symmetric.mixKeyAndHash(Handshake.psk(key))
        symmetric.mixHash(header)
        symmetric.mixHash(peerEphemeral)
        symmetric.mixKey(peerEphemeral)
        symmetric.mixHash(cipherList)
        guard constantTimeEqual(symmetric.tag(), tag) else { return finish(.badProof) }
        guard replayCache.insert(body) else { return finish(.replayed) }
        let offered = cipherList.dropFirst().compactMap(PeerCipher.init(rawValue:))
        guard let cipher = offered.first(where: { settings.ciphers.contains($0) && $0.isAvailable }) else {
            return finish(.noCommonCipher)
        }
        symmetric.mixHash(tag)

        let replyHeader = Handshake.magic + [settings.protocolVersion] + nodeID
        symmetric.mixHash(replyHeader)
        symmetric.mixHash(ephemeralPublic)
        symmetric.mixKey(ephemeralPublic)
        guard var shared = X25519.sharedSecret(secret: ephemeralSecret, peerPublic: peerEphemeral) else {
            return finish(.malformed("the peer's ephemeral key is of low order"))
        }
        wipe(&ephemeralSecret)
        symmetric.mixKey(shared)
        wipe(&shared)
        symmetric.mixHash([cipher.rawValue])
        let replyTag = symmetric.tag()
        symmetric.mixHash(replyTag)
        let keys = symmetric.split()
        let pending = Pending(
            peerNodeID: peerNodeID, keyID: keyID, cipher: cipher, handshakeHash: symmetric.h, keys: keys,
            confirmation: Blake2b.hash(symmetric.h, key: keys.confirm, outputLength: Handshake.tagSize))
        symmetric.wipe()
        state = .awaitingConfirmation(pending)
        return .send(Handshake.frame(replyHeader + ephemeralPublic + [cipher.rawValue] + replyTag))
    }

    private mutating func confirmation(_ body: [UInt8], pending: inout Pending) -> HandshakeStep {
        guard body.count == Handshake.tagSize else { return finish(.malformed("a confirmation of \(body.count) bytes")) }
        guard constantTimeEqual(body, pending.confirmation) else { return finish(.badProof) }
        let session = PeerSession(
            peerNodeID: pending.peerNodeID, keyID: pending.keyID, cipher: pending.cipher, handshakeHash: pending.handshakeHash,
            sealer: RecordSealer(cipher: pending.cipher, key: &pending.keys.responderToInitiator, settings: settings.records),
            opener: RecordOpener(cipher: pending.cipher, key: &pending.keys.initiatorToResponder, settings: settings.records))
        let leftover = framer.takeAll()
        finishState()
        return .established(session, send: [], leftover: leftover)
    }

    /// Rejects with `.timedOut` once `now` reaches the deadline; nil before, or once finished.
    public mutating func expire(now: NIODeadline) -> HandshakeStep? {
        if case .finished = state { return nil }
        guard now >= deadline else { return nil }
        return finish(.timedOut)
    }

    private mutating func finish(_ rejection: HandshakeRejection, tellPeer: Bool = true) -> HandshakeStep {
        finishState()
        return .rejected(rejection, send: tellPeer ? Handshake.refusal : [])
    }

    private mutating func finishState() {
        wipe(&ephemeralSecret)
        framer = HandshakeFramer()
        state = .finished
    }
}

/// Fingerprints of recently accepted first messages, so that an exact replay is refused before
/// any work beyond its verification. Fixed capacity; the oldest fingerprint goes first.
public struct HandshakeReplayCache: Sendable {
    struct Fingerprint: Hashable, Sendable { let high: UInt64, low: UInt64 }

    public let capacity: Int
    private var ring: [Fingerprint] = []
    private var next = 0
    private var members: Set<Fingerprint> = []

    public init(capacity: Int = 4096) {
        precondition(capacity >= 1)
        self.capacity = capacity
    }

    public var count: Int { ring.count }

    /// Remembers `message`; false when it was remembered already.
    mutating func insert(_ message: [UInt8]) -> Bool {
        let digest = Blake2b.hash(message, outputLength: 16)[...]
        let fingerprint = Fingerprint(high: digest.readBigEndian(at: 0), low: digest.readBigEndian(at: 8))
        guard !members.contains(fingerprint) else { return false }
        if ring.count < capacity {
            ring.append(fingerprint)
        } else {
            members.remove(ring[next])
            ring[next] = fingerprint
            next = (next + 1) % capacity
        }
        members.insert(fingerprint)
        return true
    }
}

enum Handshake {
    static let magic = Array("SKNP".utf8)
    static let nodeIDSize = 16
    static let tagSize = 16
    static let maxCiphers = 8
    static let replySize = 4 + 1 + nodeIDSize + X25519.size + 1 + tagSize
    static let protocolName = "Skein peer protocol v1: Noise NNpsk0 + confirmation, X25519, BLAKE2b"
    /// The refusal: an empty frame.
    static let refusal: [UInt8] = [0, 0]

    static func frame(_ body: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(2 + body.count)
        out.appendBigEndian(UInt16(body.count))
        return out + body
    }

    /// The handshake's pre-shared key: a subkey of the network key, never the key itself.
    static func psk(_ key: NetworkKey) -> [UInt8] {
        Blake2b.derive(from: key.bytes, label: "skein handshake psk v1")
    }
}

/// Reassembles u16-length-framed handshake messages from bytes split anywhere.
struct HandshakeFramer: Sendable {
    enum Next { case needMore, message([UInt8]), refusal, oversized(Int) }
    private var buffer: [UInt8] = []

    var isEmpty: Bool { buffer.isEmpty }

    mutating func append(_ bytes: [UInt8]) { buffer += bytes }

    /// The next whole message. The length prefix is checked against `limit` as soon as its two
    /// bytes are in, before waiting for the body.
    mutating func next(limit: Int) -> Next {
        guard buffer.count >= 2 else { return .needMore }
        let length = Int(buffer[0]) << 8 | Int(buffer[1])
        if length == 0 { return .refusal }
        if length > limit { return .oversized(length) }
        guard buffer.count >= 2 + length else { return .needMore }
        let message = Array(buffer[2..<(2 + length)])
        buffer.removeFirst(2 + length)
        return .message(message)
    }

    mutating func takeAll() -> [UInt8] {
        defer { buffer = [] }
        return buffer
    }
}

/// Noise's symmetric state with BLAKE2b: `h` the transcript hash, `ck` the chaining key, `k` the
/// current key (here only used to tag, never to encrypt).
struct SymmetricState: Sendable {
    private(set) var h: [UInt8]
    private var ck: [UInt8]
    private var k: [UInt8] = []

    init() {
        h = Blake2b.hash(Array(Handshake.protocolName.utf8))
        ck = h
    }

    mutating func mixHash(_ data: [UInt8]) {
        h = Blake2b.hash(h + data)
    }

    mutating func mixKey(_ input: [UInt8]) {
        let out = Self.hkdf(chainingKey: ck, input: input, outputs: 2)
        wipe()
        ck = out[0]
        k = out[1]
    }

    mutating func mixKeyAndHash(_ input: [UInt8]) {
        let out = Self.hkdf(chainingKey: ck, input: input, outputs: 3)
        wipe()
        ck = out[0]
        mixHash(out[1])
        k = out[2]
    }

    /// A 16-byte tag over the transcript under the current key: Noise's encryption of an empty
    /// payload, with a BLAKE2b MAC in place of the AEAD.
    func tag() -> [UInt8] {
        precondition(!k.isEmpty, "tag() before any key was mixed in")
        return Blake2b.hash(h, key: k, outputLength: Handshake.tagSize)
    }

    func split() -> SplitKeys {
        let out = Self.hkdf(chainingKey: ck, input: [], outputs: 3)
        return SplitKeys(confirm: out[0], initiatorToResponder: out[1], responderToInitiator: out[2])
    }

    mutating func wipe() {
        SkeinCrypto.wipe(&ck)
        SkeinCrypto.wipe(&k)
    }

    /// HKDF (RFC 5869) with keyed BLAKE2b-256 in place of HMAC, as in Noise's HKDF():
    /// temp = MAC(ck, input); out1 = MAC(temp, 0x01); out_i = MAC(temp, out_{i-1} ‖ i).
    static func hkdf(chainingKey: [UInt8], input: [UInt8], outputs: Int) -> [[UInt8]] {
        var temp = Blake2b.hash(input, key: chainingKey)
        defer { SkeinCrypto.wipe(&temp) }
        var out: [[UInt8]] = []
        var previous: [UInt8] = []
        for i in 1...outputs {
            previous = Blake2b.hash(previous + [UInt8(i)], key: temp)
            out.append(previous)
        }
        return out
    }
}

struct SplitKeys: Sendable {
    var confirm: [UInt8]
    var initiatorToResponder: [UInt8]
    var responderToInitiator: [UInt8]

    mutating func wipe() {
        SkeinCrypto.wipe(&confirm)
        SkeinCrypto.wipe(&initiatorToResponder)
        SkeinCrypto.wipe(&responderToInitiator)
    }
}
