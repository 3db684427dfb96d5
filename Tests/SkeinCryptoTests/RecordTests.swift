import NIOCore
import Testing
@testable import SkeinCrypto

/// A sealer and an opener sharing one direction's key, as the two ends of a link have them.
func makeDirection(cipher: PeerCipher = .chacha20poly1305, sealing: RecordSettings = RecordSettings(),
                   opening: RecordSettings? = nil) -> (RecordSealer, RecordOpener) {
    var a = (0..<32).map { UInt8(3 * $0) }
    var b = a
    return (RecordSealer(cipher: cipher, key: &a, settings: sealing),
            RecordOpener(cipher: cipher, key: &b, settings: opening ?? sealing))
}

func sealed(_ sealer: inout RecordSealer, _ plaintexts: [[UInt8]]) -> [[UInt8]] {
    plaintexts.map { plaintext in
        var out = ByteBuffer()
        sealer.seal(plaintext, into: &out)
        return Array(out.readableBytesView)
    }
}

@Suite struct RecordTests {
    static let ciphers = PeerCipher.allCases.filter(\.isAvailable)

    @Test(arguments: ciphers)
    func roundTripAcrossSizes(cipher: PeerCipher) throws {
        var (sealer, opener) = makeDirection(cipher: cipher)
        let sizes = [0, 1, 15, 16, 17, 255, 1000, 4096, 65_535, 65_536]
        var wire = ByteBuffer()
        let plaintexts = sizes.map { size in (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ size) } }
        for plaintext in plaintexts { sealer.seal(plaintext, into: &wire) }
        #expect(wire.readableBytes == sizes.reduce(0, +) + sizes.count * RecordSealer.overhead)
        for plaintext in plaintexts {
            #expect(try opener.next(from: &wire).map { Array($0.readableBytesView) } == plaintext)
        }
        #expect(try opener.next(from: &wire) == nil)
        try opener.finish(remaining: wire)
    }

    @Test("records opened into one buffer, back to back; a bad one appends nothing", arguments: ciphers)
    func openingIntoOneBuffer(cipher: PeerCipher) throws {
        var (sealer, opener) = makeDirection(cipher: cipher)
        let plaintexts = [[UInt8](repeating: 1, count: 10), [], [UInt8](repeating: 2, count: 5000), [3]]
        var wire = ByteBuffer()
        for plaintext in plaintexts { sealer.seal(plaintext, into: &wire) }
        #expect(try opener.nextRecordSize(in: wire) == 4 + 10 + 16)
        var opened = ByteBuffer()
        var lengths: [Int] = []
        while let length = try opener.next(from: &wire, appendingTo: &opened) { lengths.append(length) }
        #expect(lengths == plaintexts.map(\.count))
        #expect(Array(opened.readableBytesView) == plaintexts.flatMap { $0 })
        #expect(try opener.nextRecordSize(in: wire) == nil)

        sealer.seal([9, 9, 9], into: &wire)
        wire.setInteger(wire.getInteger(at: wire.writerIndex - 1, as: UInt8.self)! ^ 1, at: wire.writerIndex - 1)
        let before = opened.writerIndex
        #expect(throws: RecordError.authenticationFailed) { try opener.next(from: &wire, appendingTo: &opened) }
        #expect(opened.writerIndex == before)
    }

    @Test(arguments: ciphers)
    func theRecordLayoutIsLengthThenCiphertextAndTag(cipher: PeerCipher) {
        var (sealer, _) = makeDirection(cipher: cipher)
        let record = sealed(&sealer, [Array("hello".utf8)])[0]
        #expect(record.count == 4 + 5 + 16)
        #expect(Array(record.prefix(4)) == [0, 0, 0, 21])
        #expect(!record.suffix(21).starts(with: Array("hello".utf8)))
    }

    @Test(arguments: ciphers)
    func everyBitFlipFailsAuthentication(cipher: PeerCipher) throws {
        var (sealer, _) = makeDirection(cipher: cipher)
        let record = sealed(&sealer, [Array("twenty bytes of text".utf8)])[0]
        for index in record.indices {
            for bit in 0..<8 {
                var tampered = record
                tampered[index] ^= 1 << bit
                var (_, opener) = makeDirection(cipher: cipher)
                var wire = buffer(tampered)
                if index < 4 {
                    // The length: too big (oversized, or waits for bytes that are not this record's),
                    // too small (fails authentication). Never a plaintext.
                    let result = Result { () throws(RecordError) in try opener.next(from: &wire) }
                    switch result {
                    case .success(let plaintext): #expect(plaintext == nil, "byte \(index) bit \(bit)")
                    case .failure(let error): #expect(error == .authenticationFailed || error == .oversized(Int(tampered[0...3].readBigEndian(at: 0, as: UInt32.self)) - 16))
                    }
                } else {
                    #expect(throws: RecordError.authenticationFailed, "byte \(index) bit \(bit)") { try opener.next(from: &wire) }
                }
            }
        }
    }

    @Test func replayReorderAndDropAllFail() throws {
        var (sealer, _) = makeDirection()
        let records = sealed(&sealer, [[1], [2], [3]])

        var (_, replayed) = makeDirection()
        var wire = buffer(records[0] + records[0])
        #expect(try replayed.next(from: &wire) == buffer([1]))
        #expect(throws: RecordError.authenticationFailed) { try replayed.next(from: &wire) }

        var (_, reordered) = makeDirection()
        wire = buffer(records[1] + records[0])
        #expect(throws: RecordError.authenticationFailed) { try reordered.next(from: &wire) }

        var (_, dropped) = makeDirection()
        wire = buffer(records[0] + records[2])
        #expect(try dropped.next(from: &wire) == buffer([1]))
        #expect(throws: RecordError.authenticationFailed) { try dropped.next(from: &wire) }
        // Poisoned: even the right record is refused now.
        wire = buffer(records[1])
        #expect(throws: RecordError.authenticationFailed) { try dropped.next(from: &wire) }
        #expect(throws: RecordError.authenticationFailed) { try dropped.finish(remaining: ByteBuffer()) }
    }

    @Test func truncatedRecordsWaitThenFailAtTheEnd() throws {
        var (sealer, opener) = makeDirection()
        let record = sealed(&sealer, [Array("some plaintext".utf8)])[0]
        for cut in 0..<record.count {
            var (_, fresh) = makeDirection()
            var wire = buffer(Array(record.prefix(cut)))
            #expect(try fresh.next(from: &wire) == nil)
            #expect(wire.readableBytes == cut, "nothing consumed")
            if cut > 0 {
                #expect(throws: RecordError.truncated(cut)) { try fresh.finish(remaining: wire) }
            }
        }
        var wire = buffer(record)
        #expect(try opener.next(from: &wire) == buffer(Array("some plaintext".utf8)))
    }

    @Test func anOversizedLengthIsRefusedOnItsFourBytes() throws {
        var (_, opener) = makeDirection(sealing: RecordSettings(maxPlaintext: 1000))
        var wire = buffer([0x80, 0, 0, 0])
        #expect(throws: RecordError.oversized(0x8000_0000 - 16)) { try opener.next(from: &wire) }

        var (_, atLimit) = makeDirection(sealing: RecordSettings(maxPlaintext: 1000))
        wire = buffer([0, 0, 0x03, 0xf8])  // 1000 + 16: allowed, so it waits for the rest
        #expect(try atLimit.next(from: &wire) == nil)
        wire = buffer([0, 0, 0x03, 0xf9])
        #expect(throws: RecordError.oversized(1001)) { try atLimit.next(from: &wire) }
    }

    @Test func aLengthShorterThanTheTagFailsAuthentication() {
        var (_, opener) = makeDirection()
        var wire = buffer([0, 0, 0, 15] + [UInt8](repeating: 0, count: 15))
        #expect(throws: RecordError.authenticationFailed) { try opener.next(from: &wire) }
    }

    @Test func theOpenerLimitIsItsOwn() {
        var (sealer, opener) = makeDirection(sealing: RecordSettings(maxPlaintext: 100), opening: RecordSettings(maxPlaintext: 99))
        var wire = buffer(sealed(&sealer, [[UInt8](repeating: 1, count: 100)])[0])
        #expect(throws: RecordError.oversized(100)) { try opener.next(from: &wire) }
    }

    @Test(arguments: ciphers)
    func rekeyingByRecordCount(cipher: PeerCipher) throws {
        let settings = RecordSettings(rekeyAfterRecords: 3)
        var (sealer, opener) = makeDirection(cipher: cipher, sealing: settings)
        var wire = ByteBuffer()
        for i in 0..<40 { sealer.seal([UInt8(i)], into: &wire) }
        for i in 0..<40 { #expect(try opener.next(from: &wire) == buffer([UInt8(i)])) }
    }

    @Test func rekeyingByByteCount() throws {
        let settings = RecordSettings(rekeyAfterBytes: 10)
        var (sealer, opener) = makeDirection(sealing: settings)
        var wire = ByteBuffer()
        let plaintexts = (0..<30).map { [UInt8](repeating: UInt8($0), count: $0 % 7) }
        for plaintext in plaintexts { sealer.seal(plaintext, into: &wire) }
        for plaintext in plaintexts { #expect(try opener.next(from: &wire) == buffer(plaintext)) }
    }

    /// The rekey really changes the key: ends that disagree on when fail at the first record
    /// after the earlier one's rekey point, and not before.
    @Test func endsThatDisagreeOnRekeyingFail() throws {
        var (sealer, opener) = makeDirection(sealing: RecordSettings(rekeyAfterRecords: 3), opening: RecordSettings(rekeyAfterRecords: 4))
        var wire = ByteBuffer()
        for i in 0..<4 { sealer.seal([UInt8(i)], into: &wire) }
        for i in 0..<3 { #expect(try opener.next(from: &wire) == buffer([UInt8(i)])) }
        #expect(throws: RecordError.authenticationFailed) { try opener.next(from: &wire) }

        var (bytesSealer, bytesOpener) = makeDirection(sealing: RecordSettings(rekeyAfterBytes: 8), opening: RecordSettings(rekeyAfterBytes: 9))
        wire = ByteBuffer()
        for _ in 0..<3 { bytesSealer.seal([UInt8](repeating: 0, count: 4), into: &wire) }
        for _ in 0..<2 { #expect(try bytesOpener.next(from: &wire) != nil) }
        #expect(throws: RecordError.authenticationFailed) { try bytesOpener.next(from: &wire) }
    }

    @Test func sealAppendsAfterWhatIsAlreadyInTheBuffer() throws {
        var (sealer, opener) = makeDirection()
        var out = ByteBuffer(bytes: [9, 9])
        sealer.seal(ByteBuffer(bytes: [1, 2, 3]), into: &out)
        #expect(out.readInteger(as: UInt16.self) == 0x0909)
        #expect(try opener.next(from: &out) == buffer([1, 2, 3]))
    }
}
