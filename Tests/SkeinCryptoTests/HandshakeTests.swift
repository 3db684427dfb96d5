import NIOCore
import Testing
@testable import SkeinCrypto

@Suite struct HandshakeTests {
    static let ciphers = PeerCipher.allCases.filter(\.isAvailable)

    @Test(arguments: ciphers)
    func bothSidesGetMatchingSessionsAndRecordsFlow(cipher: PeerCipher) throws {
        let settings = HandshakeSettings(ciphers: [cipher])
        let exchange = try #require(runExchange(settings: settings))
        var mine = exchange.initiatorSession, theirs = exchange.responderSession
        #expect(mine.peerNodeID == Fixture.responderID)
        #expect(theirs.peerNodeID == Fixture.initiatorID)
        #expect(mine.cipher == cipher && theirs.cipher == cipher)
        #expect(mine.keyID == Fixture.keyA.keyID && theirs.keyID == Fixture.keyA.keyID)
        #expect(mine.handshakeHash == theirs.handshakeHash)
        #expect(exchange.msg3.count == 2 + 16)

        var wire = ByteBuffer()
        mine.sealer.seal(Array("ping".utf8), into: &wire)
        #expect(try theirs.opener.next(from: &wire) == buffer(Array("ping".utf8)))
        theirs.sealer.seal(Array("pong".utf8), into: &wire)
        #expect(try mine.opener.next(from: &wire) == buffer(Array("pong".utf8)))
        // Each direction has its own key: a record cannot be reflected back to its sender.
        mine.sealer.seal(Array("echo".utf8), into: &wire)
        #expect(throws: RecordError.authenticationFailed) { try mine.opener.next(from: &wire) }
    }

    @Test func initiatorPreferenceWinsAmongCommonCiphers() throws {
        try #require(PeerCipher.aes256gcm.isAvailable)
        var initiator = makeInitiator(settings: HandshakeSettings(ciphers: [.chacha20poly1305, .aes256gcm]))
        var responder = makeResponder(settings: HandshakeSettings(ciphers: [.aes256gcm, .chacha20poly1305]))
        var cache = HandshakeReplayCache()
        let msg2 = try #require(responder.receive(initiator.start(), replayCache: &cache).sent)
        #expect(initiator.receive(msg2).session?.cipher == .chacha20poly1305)
    }

    @Test func noCommonCipher() {
        var initiator = makeInitiator(settings: HandshakeSettings(ciphers: [.chacha20poly1305]))
        var responder = makeResponder(settings: HandshakeSettings(ciphers: [.aes256gcm]))
        var cache = HandshakeReplayCache()
        let step = responder.receive(initiator.start(), replayCache: &cache)
        #expect(Outcome(step) == .rejected(.noCommonCipher, send: Handshake.refusal))
        #expect(Outcome(initiator.receive(Handshake.refusal)) == .rejected(.refusedByPeer, send: []))
    }

    /// The initiator cannot tell a wrong key from a wrong network: both answers are the same
    /// two bytes. Only the responder knows which it was.
    @Test func wrongKeyAndWrongNetworkLookTheSameToTheInitiator() {
        var cache = HandshakeReplayCache()
        var initiator1 = makeInitiator(keyring: Keyring(primary: Fixture.keyB))
        var responder1 = makeResponder()
        let wrongKey = responder1.receive(initiator1.start(), replayCache: &cache)
        #expect(Outcome(wrongKey) == .rejected(.unknownKey(Fixture.keyB.keyID), send: Handshake.refusal))

        var initiator2 = makeInitiator(network: "other-net")
        var responder2 = makeResponder()
        let wrongNetwork = responder2.receive(initiator2.start(), replayCache: &cache)
        #expect(Outcome(wrongNetwork) == .rejected(.wrongNetwork, send: Handshake.refusal))

        #expect(Outcome(initiator1.receive(Handshake.refusal)) == .rejected(.refusedByPeer, send: []))
        #expect(Outcome(initiator2.receive(Handshake.refusal)) == .rejected(.refusedByPeer, send: []))
        #expect(cache.count == 0)
    }

    @Test func sameKeyIDButAnotherKeyIsABadProof() throws {
        // A forged msg1 naming key A, made with key B: every field right except the proof.
        var initiator = makeInitiator(keyring: Keyring(primary: Fixture.keyB))
        var msg1 = initiator.start()
        let idAt = 2 + 6 + Fixture.network.utf8.count
        msg1.replaceSubrange(idAt..<(idAt + 8), with: Fixture.keyA.keyID.bytes)
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        #expect(Outcome(responder.receive(msg1, replayCache: &cache)) == .rejected(.badProof, send: Handshake.refusal))
    }

    @Test func wrongVersion() {
        var initiator = makeInitiator(settings: HandshakeSettings(protocolVersion: 2))
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        #expect(Outcome(responder.receive(initiator.start(), replayCache: &cache)) == .rejected(.wrongVersion(2), send: Handshake.refusal))
    }

    @Test func aReplayedFirstMessageIsRefusedByTheCache() throws {
        let exchange = try #require(runExchange())
        var cache = HandshakeReplayCache()
        var first = makeResponder(ephemeral: (0..<32).map { UInt8(truncatingIfNeeded: 7 * $0 + 1) })
        #expect(first.receive(exchange.msg1, replayCache: &cache).sent != nil)
        var second = makeResponder(ephemeral: (0..<32).map { UInt8(truncatingIfNeeded: 9 * $0 + 2) })
        #expect(Outcome(second.receive(exchange.msg1, replayCache: &cache)) == .rejected(.replayed, send: Handshake.refusal))
    }

    /// Without the cache, a replayer gets msg2 but cannot compute msg3: no session, ever.
    @Test func aReplayerWithoutTheCacheNeverGetsASession() throws {
        let exchange = try #require(runExchange())
        for attempt in 0..<3 {
            var cache = HandshakeReplayCache()
            var responder = makeResponder(ephemeral: (0..<32).map { UInt8(attempt * 31 + $0) })
            let msg2 = try #require(responder.receive(exchange.msg1, replayCache: &cache).sent)
            #expect(msg2 != exchange.msg2)
            switch attempt {
            case 0:  // the recorded msg3 belongs to another responder ephemeral
                #expect(Outcome(responder.receive(exchange.msg3, replayCache: &cache)) == .rejected(.badProof, send: Handshake.refusal))
            case 1:  // a guess
                #expect(Outcome(responder.receive([0, 16] + [UInt8](repeating: 0xaa, count: 16), replayCache: &cache))
                        == .rejected(.badProof, send: Handshake.refusal))
            default:  // silence
                #expect(responder.expire(now: Fixture.start + .seconds(5))?.rejection == .timedOut)
            }
        }
    }

    @Test func tamperingAnyByteOfMsg1NeverYieldsAReply() throws {
        let exchange = try #require(runExchange())
        for index in exchange.msg1.indices {
            for bit in 0..<8 {
                var msg1 = exchange.msg1
                msg1[index] ^= 1 << bit
                var responder = makeResponder()
                var cache = HandshakeReplayCache()
                let outcome = Outcome(responder.receive(msg1, replayCache: &cache))
                if index < 2 {
                    // The length prefix: now too long (wait, then time out) or too short (rejected).
                    #expect(outcome == .needMoreBytes || outcome.isRejection, "byte \(index) bit \(bit): \(outcome)")
                } else {
                    #expect(outcome.isRejection, "byte \(index) bit \(bit): \(outcome)")
                }
            }
        }
    }

    @Test func tamperingAnyByteOfMsg2IsRejectedByTheInitiator() throws {
        let exchange = try #require(runExchange())
        for index in 2..<exchange.msg2.count {
            for bit in 0..<8 {
                var msg2 = exchange.msg2
                msg2[index] ^= 1 << bit
                var initiator = makeInitiator()
                _ = initiator.start()
                let step = initiator.receive(msg2)
                #expect(step.rejection != nil, "byte \(index) bit \(bit)")
                if index >= 4 + 1 + 16 + 32 {  // the cipher choice and the tag are covered by the proof
                    #expect(Outcome(step) == .rejected(.badProof, send: Handshake.refusal), "byte \(index) bit \(bit)")
                }
            }
        }
    }

    @Test func tamperingAnyByteOfMsg3IsABadProof() throws {
        let exchange = try #require(runExchange())
        for index in 2..<exchange.msg3.count {
            for bit in 0..<8 {
                var msg3 = exchange.msg3
                msg3[index] ^= 1 << bit
                var responder = makeResponder()
                var cache = HandshakeReplayCache()
                #expect(responder.receive(exchange.msg1, replayCache: &cache).sent == exchange.msg2)
                #expect(Outcome(responder.receive(msg3, replayCache: &cache)) == .rejected(.badProof, send: Handshake.refusal))
            }
        }
    }

    @Test func aLowOrderEphemeralIsRefused() throws {
        let exchange = try #require(runExchange())
        var msg2 = exchange.msg2
        msg2.replaceSubrange((2 + 21)..<(2 + 53), with: [UInt8](repeating: 0, count: 32))
        var initiator = makeInitiator()
        _ = initiator.start()
        #expect(Outcome(initiator.receive(msg2)) == .rejected(.malformed("the peer's ephemeral key is of low order"), send: Handshake.refusal))
    }

    /// A msg1 with a valid proof (made with the key, as only a key holder could) but a low-order
    /// ephemeral: the all-zero DH output is refused rather than used.
    @Test func theResponderRefusesALowOrderEphemeral() {
        let zeroPoint = [UInt8](repeating: 0, count: 32)
        var header = Handshake.magic + [1, UInt8(Fixture.network.utf8.count)] + Array(Fixture.network.utf8)
        header += Fixture.keyA.keyID.bytes + Fixture.initiatorID
        let ciphers: [UInt8] = [1, PeerCipher.chacha20poly1305.rawValue]
        var symmetric = SymmetricState()
        symmetric.mixKeyAndHash(Handshake.psk(Fixture.keyA))
        symmetric.mixHash(header)
        symmetric.mixHash(zeroPoint)
        symmetric.mixKey(zeroPoint)
        symmetric.mixHash(ciphers)
        let msg1 = Handshake.frame(header + zeroPoint + ciphers + symmetric.tag())
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        #expect(Outcome(responder.receive(msg1, replayCache: &cache))
                == .rejected(.malformed("the peer's ephemeral key is of low order"), send: Handshake.refusal))
        #expect(X25519.sharedSecret(secret: Fixture.responderEphemeral, peerPublic: zeroPoint) == nil)
    }

    @Test func truncatedMessagesWaitThenTimeOut() throws {
        let exchange = try #require(runExchange())
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        #expect(Outcome(responder.receive(Array(exchange.msg1.dropLast()), replayCache: &cache)) == .needMoreBytes)
        #expect(responder.expire(now: Fixture.start + .milliseconds(4_999)) == nil)
        #expect(responder.expire(now: Fixture.start + .seconds(5)).map(Outcome.init) == .rejected(.timedOut, send: Handshake.refusal))
        #expect(responder.expire(now: Fixture.start + .seconds(6)) == nil)
        #expect(Outcome(responder.receive([0], replayCache: &cache)) == .rejected(.malformed("the handshake is over"), send: []))

        var initiator = makeInitiator()
        _ = initiator.start()
        #expect(Outcome(initiator.receive(Array(exchange.msg2.prefix(30)))) == .needMoreBytes)
        #expect(initiator.expire(now: Fixture.start + .seconds(4)) == nil)
        #expect(initiator.expire(now: Fixture.start + .seconds(5)).map(Outcome.init) == .rejected(.timedOut, send: Handshake.refusal))
    }

    @Test func theResponderTimesOutWaitingForTheConfirmation() throws {
        let exchange = try #require(runExchange())
        var responder = makeResponder(settings: HandshakeSettings(timeout: .milliseconds(300)))
        var cache = HandshakeReplayCache()
        #expect(responder.receive(exchange.msg1, replayCache: &cache).sent == exchange.msg2)
        #expect(responder.receive(Array(exchange.msg3.prefix(10)), replayCache: &cache).sent == nil)
        #expect(responder.deadline == Fixture.start + .milliseconds(300))
        #expect(responder.expire(now: Fixture.start + .milliseconds(300))?.rejection == .timedOut)
    }

    @Test func oversizedLengthIsRefusedBeforeTheBodyArrives() {
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        #expect(Outcome(responder.receive([0x02], replayCache: &cache)) == .needMoreBytes)
        #expect(Outcome(responder.receive([0x01], replayCache: &cache)) == .rejected(.oversized(513), send: Handshake.refusal))

        var initiator = makeInitiator(settings: HandshakeSettings(maxMessageBytes: 69))
        _ = initiator.start()
        #expect(Outcome(initiator.receive([0, 70])) == .rejected(.oversized(70), send: Handshake.refusal))
    }

    @Test func garbageIsMalformed() {
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        let http = Array("GET / HTTP/1.1\r\n\r\n".utf8)
        #expect(responder.receive(http, replayCache: &cache).rejection != nil)
        var other = makeResponder()
        #expect(Outcome(other.receive([0, 4, 1, 2, 3, 4], replayCache: &cache)) == .rejected(.malformed("not a Skein peer handshake"), send: Handshake.refusal))
    }

    @Test func bytesAfterMsg1OrMsg2BeforeTheirAnswerAreMalformed() throws {
        let exchange = try #require(runExchange())
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        #expect(responder.receive(exchange.msg1 + [0], replayCache: &cache).rejection == .malformed("bytes after the first message, before our reply"))
        var initiator = makeInitiator()
        _ = initiator.start()
        #expect(initiator.receive(exchange.msg2 + [0]).rejection == .malformed("bytes after the reply, before our confirmation"))
    }

    /// The byte streams of one exchange, split at every point into two reads, and one byte at a
    /// time: the outcome never depends on how bytes arrive.
    @Test func everySplitOfTheExchange() throws {
        let exchange = try #require(runExchange())
        var sealer = exchange.initiatorSession.sealer
        var records = ByteBuffer()
        sealer.seal(Array("after msg3".utf8), into: &records)
        let toResponderTail = exchange.msg3 + Array(records.readableBytesView)

        for cut in 0...exchange.msg1.count {
            var responder = makeResponder()
            var cache = HandshakeReplayCache()
            let first = Outcome(responder.receive(Array(exchange.msg1[..<cut]), replayCache: &cache))
            #expect(first == (cut == exchange.msg1.count ? .send(exchange.msg2) : .needMoreBytes))
            if cut < exchange.msg1.count {
                #expect(Outcome(responder.receive(Array(exchange.msg1[cut...]), replayCache: &cache)) == .send(exchange.msg2))
            }
        }
        for cut in 0...exchange.msg2.count {
            var initiator = makeInitiator()
            _ = initiator.start()
            var step = initiator.receive(Array(exchange.msg2[..<cut]))
            if cut < exchange.msg2.count {
                #expect(Outcome(step) == .needMoreBytes)
                step = initiator.receive(Array(exchange.msg2[cut...]))
            }
            #expect(Outcome(step) == .established(send: exchange.msg3, leftover: []))
        }
        for cut in 0...toResponderTail.count {
            var responder = makeResponder()
            var cache = HandshakeReplayCache()
            _ = responder.receive(exchange.msg1, replayCache: &cache)
            var step = responder.receive(Array(toResponderTail[..<cut]), replayCache: &cache)
            var leftover: [UInt8] = []
            if cut < exchange.msg3.count {
                #expect(Outcome(step) == .needMoreBytes)
                step = responder.receive(Array(toResponderTail[cut...]), replayCache: &cache)
                leftover = try #require(step.leftover)
            } else {
                leftover = try #require(step.leftover) + Array(toResponderTail[cut...])
            }
            var session = try #require(step.session)
            var wire = buffer(leftover)
            #expect(try session.opener.next(from: &wire) == buffer(Array("after msg3".utf8)))
        }

        // One byte at a time, both directions.
        var initiator = makeInitiator()
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        var toInitiator: [UInt8] = []
        for byte in initiator.start() {
            if case .send(let bytes) = responder.receive([byte], replayCache: &cache) { toInitiator = bytes }
        }
        var toResponder: [UInt8] = []
        var initiatorSession: PeerSession?
        for byte in toInitiator {
            if case .established(let session, let send, _) = initiator.receive([byte]) { initiatorSession = session; toResponder = send }
        }
        var responderSession: PeerSession?
        for byte in toResponder {
            if let session = responder.receive([byte], replayCache: &cache).session { responderSession = session }
        }
        #expect(initiatorSession?.handshakeHash == responderSession?.handshakeHash)
        #expect(responderSession != nil)
    }

    @Test func leftoverRecordsAfterMsg3() throws {
        let exchange = try #require(runExchange())
        var sealer = exchange.initiatorSession.sealer
        var records = ByteBuffer()
        for text in ["one", "two", "three"] { sealer.seal(Array(text.utf8), into: &records) }
        let partial = Array(records.readableBytesView.dropLast(5))

        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        _ = responder.receive(exchange.msg1, replayCache: &cache)
        let step = responder.receive(exchange.msg3 + partial, replayCache: &cache)
        #expect(step.leftover == partial)
        var session = try #require(step.session)
        var wire = buffer(partial)
        #expect(try session.opener.next(from: &wire) == buffer(Array("one".utf8)))
        #expect(try session.opener.next(from: &wire) == buffer(Array("two".utf8)))
        #expect(try session.opener.next(from: &wire) == nil)
        wire.writeBytes(records.readableBytesView.suffix(5))
        #expect(try session.opener.next(from: &wire) == buffer(Array("three".utf8)))
    }

    /// Rotation: a key that is accepted (not primary) on one side still links, in both phases.
    @Test(arguments: [
        (Keyring(primary: Fixture.keyB), Keyring(primary: Fixture.keyA, accepted: [Fixture.keyB])),
        (Keyring(primary: Fixture.keyA, accepted: [Fixture.keyB]), Keyring(primary: Fixture.keyB, accepted: [Fixture.keyA])),
        (Keyring(primary: Fixture.keyA), Keyring(primary: Fixture.keyB, accepted: [Fixture.keyC, Fixture.keyA])),
    ])
    func anAcceptedKeyLinks(initiatorKeys: Keyring, responderKeys: Keyring) throws {
        var initiator = makeInitiator(keyring: initiatorKeys)
        var responder = makeResponder(keyring: responderKeys)
        var cache = HandshakeReplayCache()
        let msg2 = try #require(responder.receive(initiator.start(), replayCache: &cache).sent)
        let step = initiator.receive(msg2)
        let msg3 = try #require(step.establishedSend)
        let session = try #require(responder.receive(msg3, replayCache: &cache).session)
        #expect(session.keyID == initiatorKeys.primaryID)
        #expect(step.session?.keyID == initiatorKeys.primaryID)
    }

    @Test func theReplayCacheForgetsTheOldestFirst() {
        var cache = HandshakeReplayCache(capacity: 3)
        var admitted: [Bool] = []
        for message in [[0], [1], [2], [1], [3], [0], [2], [3], [1]] as [[UInt8]] { admitted.append(cache.insert(message)) }
        // [3] evicts [0], [0] evicts [1], so [1] is new again at the end.
        #expect(admitted == [true, true, true, false, true, true, false, false, true])
        #expect(cache.count == 3)
    }

    @Test func theRefusalIsAnEmptyFrameAndEndsEitherSide() throws {
        let exchange = try #require(runExchange())
        var responder = makeResponder()
        var cache = HandshakeReplayCache()
        _ = responder.receive(exchange.msg1, replayCache: &cache)
        #expect(Outcome(responder.receive(Handshake.refusal, replayCache: &cache)) == .rejected(.refusedByPeer, send: []))
        #expect(Handshake.refusal == [0, 0])
    }
}

extension Outcome {
    var isRejection: Bool { if case .rejected = self { true } else { false } }
}
