import CSodium

/// Sealed gossip datagrams (Docs/peer-protocol.md §3):
/// `[version u8][key id 8][nonce 24][XChaCha20-Poly1305 of (unix ms u64 BE ‖ payload)][tag 16]`,
/// the 33-byte header as associated data, under a key derived from the network key and the
/// network name (never the network key itself).
enum Datagram {
    static let version: UInt8 = 1
    static let nonceSize = 24
    static let headerSize = 1 + KeyID.size + nonceSize
    static let tagSize = 16
    static let timestampSize = 8

    static func key(for networkKey: NetworkKey, network: String) -> SecretKey {
        let name = Array(network.utf8)
        var context = [UInt8]()
        context.appendBigEndian(UInt16(name.count))
        var key = Blake2b.derive(from: networkKey.bytes, label: "skein datagram key v1", context: context + name)
        return SecretKey(consuming: &key)
    }
}

/// Seals datagrams under the keyring's primary key.
public struct DatagramSealer: Sendable {
    /// Bytes a sealed datagram adds to its payload: header, timestamp and tag.
    public static let overhead = Datagram.headerSize + Datagram.timestampSize + Datagram.tagSize

    private let keyID: KeyID
    private let key: SecretKey

    public init(keyring: Keyring, network: String) {
        keyID = keyring.primaryID
        key = Datagram.key(for: keyring.primary, network: network)
    }

    /// Seals `payload` stamped with `nowMillis` (unix time in milliseconds). `nonce` is 24 fresh
    /// random bytes: XChaCha20's nonce is long enough for random nonces to never repeat.
    public func seal(_ payload: [UInt8], nowMillis: UInt64, nonce: [UInt8]) -> [UInt8] {
        precondition(nonce.count == Datagram.nonceSize, "a datagram nonce is 24 bytes")
        var out = [Datagram.version] + keyID.bytes + nonce
        var plaintext = [UInt8]()
        plaintext.reserveCapacity(Datagram.timestampSize + payload.count)
        plaintext.appendBigEndian(nowMillis)
        plaintext += payload
        let header = out
        out += [UInt8](repeating: 0, count: plaintext.count + Datagram.tagSize)
        out.withUnsafeMutableBufferPointer { buffer in
            let c = buffer.baseAddress! + Datagram.headerSize
            _ = crypto_aead_xchacha20poly1305_ietf_encrypt(
                c, nil, plaintext, UInt64(plaintext.count), header, UInt64(header.count), nil, nonce, key.pointer)
        }
        return out
    }
}

/// Why a datagram was dropped.
public enum DatagramError: Error, Equatable, Sendable, CustomStringConvertible {
    case tooShort, wrongVersion, unknownKey, authenticationFailed, stale, replayed

    public var description: String {
        switch self {
        case .tooShort: "shorter than a sealed datagram's overhead"
        case .wrongVersion: "an unknown datagram version"
        case .unknownKey: "sealed with a key this keyring does not hold"
        case .authenticationFailed: "failed authentication"
        case .stale: "its timestamp is outside the accepted window"
        case .replayed: "a replay (or too old to tell)"
        }
    }
}

/// Opens datagrams sealed under any key of the keyring, rejecting stale ones and replays.
///
/// Replay rule (Docs/peer-protocol.md §3.3): the opener remembers the nonce and timestamp of up
/// to `replayCapacity` accepted datagrams and keeps a floor, the newest timestamp it has
/// forgotten. A datagram is accepted only if its timestamp is within ±window of now, strictly
/// above the floor, and its nonce is not remembered. Entries older than now − window are
/// forgotten; when full, the oldest entry is forgotten to make room. Either way the floor rises
/// to the forgotten timestamp, so a forgotten datagram can never be accepted again.
public struct DatagramOpener: Sendable {
    public let windowMillis: UInt64
    public let replayCapacity: Int
    private let network: String
    private var keys: [KeyID: SecretKey] = [:]
    private var recent = RecentNonces()

    public init(keyring: Keyring, network: String, windowMillis: UInt64 = 30_000, replayCapacity: Int = 65_536) {
        precondition(replayCapacity >= 1)
        self.network = network
        self.windowMillis = windowMillis
        self.replayCapacity = replayCapacity
        update(keyring: keyring)
    }

    /// Switches to another keyring (after a reload). Replay state is kept.
    public mutating func update(keyring: Keyring) {
        keys = [:]
        for (id, key) in zip(keyring.keyIDs, keyring.keys) where keys[id] == nil {
            keys[id] = Datagram.key(for: key, network: network)
        }
    }

    /// The newest timestamp this opener has forgotten: datagrams at or below it are refused.
    public var floorMillis: UInt64? { recent.floor }

    /// The payload of an authentic, fresh, first-seen datagram.
    public mutating func open(_ datagram: [UInt8], nowMillis: UInt64) throws(DatagramError) -> [UInt8] {
        guard datagram.count >= DatagramSealer.overhead else { throw .tooShort }
        guard datagram[0] == Datagram.version else { throw .wrongVersion }
        guard let id = KeyID(bytes: datagram[1..<(1 + KeyID.size)]), let key = keys[id] else { throw .unknownKey }
        let nonce = datagram[(1 + KeyID.size)..<Datagram.headerSize]
        var plaintext = [UInt8](repeating: 0, count: datagram.count - Datagram.headerSize - Datagram.tagSize)
        let rc = datagram.withUnsafeBufferPointer { d in
            crypto_aead_xchacha20poly1305_ietf_decrypt(
                &plaintext, nil, nil, d.baseAddress! + Datagram.headerSize, UInt64(d.count - Datagram.headerSize),
                d.baseAddress!, UInt64(Datagram.headerSize), d.baseAddress! + 1 + KeyID.size, key.pointer)
        }
        guard rc == 0 else { throw .authenticationFailed }
        let timestamp = plaintext[...].readBigEndian(at: 0, as: UInt64.self)
        let (low, lowOverflow) = nowMillis.subtractingReportingOverflow(windowMillis)
        let (high, highOverflow) = nowMillis.addingReportingOverflow(windowMillis)
        guard (lowOverflow || timestamp >= low) && (highOverflow || timestamp <= high) else { throw .stale }
        if !lowOverflow { recent.forget(olderThan: low) }
        guard recent.admit(RecentNonces.Nonce(nonce), timestamp: timestamp, capacity: replayCapacity) else { throw .replayed }
        return Array(plaintext[Datagram.timestampSize...])
    }
}

/// The remembered (nonce, timestamp) pairs: a set for lookup, a binary min-heap on timestamp for
/// forgetting the oldest first, and the floor.
struct RecentNonces: Sendable {
    struct Nonce: Hashable, Sendable {
        let a: UInt64, b: UInt64, c: UInt64
        init(_ bytes: ArraySlice<UInt8>) {
            a = bytes.readBigEndian(at: 0)
            b = bytes.readBigEndian(at: 8)
            c = bytes.readBigEndian(at: 16)
        }
    }

    private var members: Set<Nonce> = []
    private var heap: [(timestamp: UInt64, nonce: Nonce)] = []
    private(set) var floor: UInt64?

    var count: Int { heap.count }

    /// Remembers the nonce unless it is remembered already or at or below the floor; makes room
    /// by forgetting the oldest entry when `capacity` is reached.
    mutating func admit(_ nonce: Nonce, timestamp: UInt64, capacity: Int) -> Bool {
        if let floor, timestamp <= floor { return false }
        if members.contains(nonce) { return false }
        if heap.count >= capacity {
            // The oldest is at or below the newcomer? If not, the newcomer would become the
            // oldest and be forgotten at once: refuse it instead.
            guard heap[0].timestamp < timestamp else { return false }
            forgetOldest()
        }
        members.insert(nonce)
        heap.append((timestamp, nonce))
        siftUp(heap.count - 1)
        return true
    }

    /// Forgets every entry with a timestamp below `limit` (they are outside the window).
    mutating func forget(olderThan limit: UInt64) {
        while let oldest = heap.first, oldest.timestamp < limit { forgetOldest() }
    }

    private mutating func forgetOldest() {
        let oldest = heap[0]
        floor = max(floor ?? 0, oldest.timestamp)
        members.remove(oldest.nonce)
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            siftDown(0)
        }
    }

    private mutating func siftUp(_ index: Int) {
        var child = index
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].timestamp < heap[parent].timestamp else { return }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ index: Int) {
        var parent = index
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < heap.count && heap[left].timestamp < heap[smallest].timestamp { smallest = left }
            if right < heap.count && heap[right].timestamp < heap[smallest].timestamp { smallest = right }
            guard smallest != parent else { return }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
    }
}
