import Testing
@testable import SkeinCrypto

@Suite struct DatagramTests {
    static let now: UInt64 = 1_800_000_000_000
    static let keyring = Keyring(primary: Fixture.keyA)

    static func nonce(_ n: Int) -> [UInt8] { (0..<24).map { UInt8(truncatingIfNeeded: n &+ $0 &* 13) } }

    func seal(_ payload: [UInt8], at millis: UInt64 = now, nonce n: Int = 0, keyring: Keyring = keyring, network: String = Fixture.network) -> [UInt8] {
        DatagramSealer(keyring: keyring, network: network).seal(payload, nowMillis: millis, nonce: Self.nonce(n))
    }

    @Test func roundTrip() throws {
        var opener = DatagramOpener(keyring: Self.keyring, network: Fixture.network)
        for (i, payload) in [[], [1], Array("a membership update".utf8), [UInt8](repeating: 7, count: 1400)].enumerated() {
            let datagram = seal(payload, nonce: i)
            #expect(datagram.count == payload.count + DatagramSealer.overhead)
            #expect(datagram[0] == 1)
            #expect(Array(datagram[1..<9]) == Fixture.keyA.keyID.bytes)
            #expect(Array(datagram[9..<33]) == Self.nonce(i))
            #expect(try opener.open(datagram, nowMillis: Self.now) == payload)
        }
        #expect(DatagramSealer.overhead == 57)
    }

    @Test func everyBitFlipIsRefused() {
        let datagram = seal(Array("gossip".utf8))
        for index in datagram.indices {
            for bit in 0..<8 {
                var tampered = datagram
                tampered[index] ^= 1 << bit
                var opener = DatagramOpener(keyring: Self.keyring, network: Fixture.network)
                let expected: DatagramError = index == 0 ? .wrongVersion : index < 9 ? .unknownKey : .authenticationFailed
                #expect(throws: expected, "byte \(index) bit \(bit)") { try opener.open(tampered, nowMillis: Self.now) }
            }
        }
    }

    @Test func shortAndUnknownAndOtherNetwork() {
        var opener = DatagramOpener(keyring: Self.keyring, network: Fixture.network)
        let datagram = seal([1, 2, 3])
        #expect(throws: DatagramError.tooShort) { try opener.open(Array(seal([]).dropLast()), nowMillis: Self.now) }
        #expect(throws: DatagramError.tooShort) { try opener.open([], nowMillis: Self.now) }
        #expect(throws: DatagramError.unknownKey) { try opener.open(seal([1], keyring: Keyring(primary: Fixture.keyB)), nowMillis: Self.now) }
        #expect(throws: DatagramError.authenticationFailed) { try opener.open(seal([1], network: "other-net"), nowMillis: Self.now) }
        #expect(throws: Never.self) { try opener.open(datagram, nowMillis: Self.now) }
    }

    @Test func acceptedKeysOpenAndUpdateSwitchesKeyrings() throws {
        var opener = DatagramOpener(keyring: Keyring(primary: Fixture.keyA, accepted: [Fixture.keyB]), network: Fixture.network)
        #expect(try opener.open(seal([1], nonce: 1, keyring: Keyring(primary: Fixture.keyB)), nowMillis: Self.now) == [1])
        opener.update(keyring: Keyring(primary: Fixture.keyC))
        #expect(throws: DatagramError.unknownKey) { try opener.open(seal([2], nonce: 2, keyring: Keyring(primary: Fixture.keyB)), nowMillis: Self.now) }
        #expect(try opener.open(seal([3], nonce: 3, keyring: Keyring(primary: Fixture.keyC)), nowMillis: Self.now) == [3])
        // Replay state survives the update.
        opener.update(keyring: Keyring(primary: Fixture.keyB))
        #expect(throws: DatagramError.replayed) { try opener.open(seal([1], nonce: 1, keyring: Keyring(primary: Fixture.keyB)), nowMillis: Self.now) }
    }

    @Test func theWindowIsInclusive() throws {
        var opener = DatagramOpener(keyring: Self.keyring, network: Fixture.network)
        #expect(try opener.open(seal([1], at: Self.now - 30_000, nonce: 1), nowMillis: Self.now) == [1])
        #expect(try opener.open(seal([2], at: Self.now + 30_000, nonce: 2), nowMillis: Self.now) == [2])
        #expect(throws: DatagramError.stale) { try opener.open(seal([3], at: Self.now - 30_001, nonce: 3), nowMillis: Self.now) }
        #expect(throws: DatagramError.stale) { try opener.open(seal([4], at: Self.now + 30_001, nonce: 4), nowMillis: Self.now) }
        var early = DatagramOpener(keyring: Self.keyring, network: Fixture.network, windowMillis: 1_000)
        #expect(try early.open(seal([5], at: 0, nonce: 5), nowMillis: 10) == [5])
        #expect(throws: DatagramError.stale) { try early.open(seal([6], at: .max, nonce: 6), nowMillis: 10) }
    }

    @Test func replaysAreRefused() throws {
        var opener = DatagramOpener(keyring: Self.keyring, network: Fixture.network)
        let datagram = seal([1])
        #expect(try opener.open(datagram, nowMillis: Self.now) == [1])
        #expect(throws: DatagramError.replayed) { try opener.open(datagram, nowMillis: Self.now) }
        #expect(throws: DatagramError.replayed) { try opener.open(datagram, nowMillis: Self.now + 29_000) }
        // Once outside the window it is stale, and its nonce is forgotten; it stays refused even
        // if the clock steps back, since the floor rose past it.
        #expect(throws: DatagramError.stale) { try opener.open(datagram, nowMillis: Self.now + 30_001) }
        _ = try opener.open(seal([9], at: Self.now + 30_001, nonce: 9), nowMillis: Self.now + 30_001)
        #expect(opener.floorMillis == Self.now)
        #expect(throws: DatagramError.replayed) { try opener.open(datagram, nowMillis: Self.now) }
    }

    /// When full: the oldest remembered datagram is forgotten to make room for a newer one, the
    /// floor rises to its timestamp, and anything at or below the floor is refused.
    @Test func theCapacityRule() throws {
        var opener = DatagramOpener(keyring: Self.keyring, network: Fixture.network, replayCapacity: 3)
        let t = Self.now
        let first = seal([0], at: t, nonce: 0)
        for (i, datagram) in [first, seal([1], at: t + 1, nonce: 1), seal([2], at: t + 2, nonce: 2)].enumerated() {
            #expect(try opener.open(datagram, nowMillis: t) == [UInt8(i)])
        }
        #expect(opener.floorMillis == nil)
        #expect(try opener.open(seal([3], at: t + 3, nonce: 3), nowMillis: t) == [3])  // forgets `first`
        #expect(opener.floorMillis == t)
        #expect(throws: DatagramError.replayed) { try opener.open(first, nowMillis: t) }
        #expect(throws: DatagramError.replayed) { try opener.open(seal([4], at: t, nonce: 4), nowMillis: t) }
        // Not newer than the oldest remembered (t + 1): refused rather than forgotten at once.
        #expect(throws: DatagramError.replayed) { try opener.open(seal([5], at: t + 1, nonce: 5), nowMillis: t) }
        #expect(try opener.open(seal([6], at: t + 2, nonce: 6), nowMillis: t) == [6])  // forgets t + 1
        #expect(opener.floorMillis == t + 1)
        // Out-of-order arrival inside the window is fine while there is room.
        var roomy = DatagramOpener(keyring: Self.keyring, network: Fixture.network, replayCapacity: 10)
        for (i, offset) in [5, 1, 9, 3].enumerated() {
            #expect(try roomy.open(seal([UInt8(i)], at: t - UInt64(offset), nonce: 100 + i), nowMillis: t) == [UInt8(i)])
        }
    }

    @Test func theHeapForgetsInTimestampOrder() {
        var recent = RecentNonces()
        let stamps: [UInt64] = [50, 10, 40, 30, 20, 60, 5, 45]
        for (i, stamp) in stamps.enumerated() {
            let admitted = recent.admit(RecentNonces.Nonce(Self.nonce(i)[...]), timestamp: stamp, capacity: 100)
            #expect(admitted)
        }
        var floors: [UInt64] = []
        for limit in stride(from: UInt64(0), through: 70, by: 5) {
            recent.forget(olderThan: limit)
            if let floor = recent.floor, floors.last != floor { floors.append(floor) }
        }
        #expect(floors == [5, 10, 20, 30, 40, 45, 50, 60])
        #expect(recent.count == 0)
    }
}
