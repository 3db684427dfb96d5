import CLibCrypto
import CSodium
import NIOConcurrencyHelpers
import NIOCore

/// The AEAD that protects a peer link's records, chosen during the handshake.
public enum PeerCipher: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case aes256gcm = 1
    /// ChaCha20-Poly1305, IETF variant (96-bit nonce).
    case chacha20poly1305 = 2

    /// This machine's preference. AES-256-GCM comes first when libsodium can use it (it needs
    /// AES-NI and CLMUL): measured faster here at every record size (Docs/peer-protocol.md §2.5).
    public static var preferred: [PeerCipher] {
        Sodium.initialize()
        return crypto_aead_aes256gcm_is_available() == 1 ? [.aes256gcm, .chacha20poly1305] : [.chacha20poly1305]
    }

    /// Whether libsodium can use this cipher on this machine.
    public var isAvailable: Bool {
        Sodium.initialize()
        return self == .chacha20poly1305 || crypto_aead_aes256gcm_is_available() == 1
    }

    public var description: String {
        switch self {
        case .aes256gcm: "AES-256-GCM"
        case .chacha20poly1305: "ChaCha20-Poly1305"
        }
    }
}

/// Limits and rekey points of the record layer. Both ends must use the same rekey points: they
/// are part of the protocol (Docs/peer-protocol.md §2.4); only tests change them.
public struct RecordSettings: Sendable, Equatable {
    /// The largest plaintext one record may carry; a longer length header ends the link.
    public var maxPlaintext: Int
    /// A direction derives its next key after this many records under the current one.
    public var rekeyAfterRecords: UInt64
    /// ... or after this many plaintext bytes under the current one, whichever comes first.
    public var rekeyAfterBytes: UInt64

    /// The defaults stay far inside both ciphers' safe limits: 2^24 records and 2^34 bytes per
    /// key, against TLS 1.3's 2^24.5 full records for AES-GCM (ChaCha20-Poly1305's are higher).
    public init(maxPlaintext: Int = 66_560, rekeyAfterRecords: UInt64 = 1 << 24, rekeyAfterBytes: UInt64 = 1 << 34) {
        precondition(maxPlaintext >= 0 && maxPlaintext <= Int(UInt32.max) - RecordSealer.tagSize)
        precondition(rekeyAfterRecords >= 1 && rekeyAfterBytes >= 1)
        self.maxPlaintext = maxPlaintext
        self.rekeyAfterRecords = rekeyAfterRecords
        self.rekeyAfterBytes = rekeyAfterBytes
    }
}

/// Why a record stream had to end. Every case is fatal to the link.
public enum RecordError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The record was tampered with, replayed, reordered, or one before it was dropped.
    case authenticationFailed
    /// The length header announced this many plaintext bytes, more than `maxPlaintext`.
    case oversized(Int)
    /// The stream ended with this many bytes of an incomplete record.
    case truncated(Int)

    public var description: String {
        switch self {
        case .authenticationFailed: "a record failed authentication (tampered, replayed, reordered or dropped)"
        case .oversized(let n): "a record announced \(n) plaintext bytes, more than allowed"
        case .truncated(let n): "the stream ended inside a record (\(n) bytes left over)"
        }
    }
}

/// Seals the records of one direction of a link. Record: `[u32 big-endian ciphertext length]`
/// `[ciphertext][16-byte tag]`, the length header as associated data, the nonce the record's
/// index under the current key (never sent).
public struct RecordSealer: Sendable {
    static let tagSize = 16
    /// Bytes a record adds to its plaintext: the length header and the tag.
    public static let overhead = 4 + tagSize

    var direction: RecordDirection

    init(cipher: PeerCipher, key: inout [UInt8], settings: RecordSettings) {
        direction = RecordDirection(key: RecordKey(cipher: cipher, consuming: &key), settings: settings)
    }

    public var cipher: PeerCipher { direction.key.cipher }
    public var settings: RecordSettings { direction.settings }

    /// Appends one whole record sealing `plaintext` to `out`, encrypting straight into `out`'s
    /// writable bytes (no allocation when `out` has room). `plaintext.count` must not exceed
    /// `settings.maxPlaintext`: splitting messages into records is the caller's job.
    public mutating func seal(_ plaintext: UnsafeRawBufferPointer, into out: inout ByteBuffer) {
        precondition(plaintext.count <= direction.settings.maxPlaintext, "record plaintext over maxPlaintext")
        let index = direction.advance(plaintextCount: plaintext.count)
        let key = direction.key
        let ciphertextCount = plaintext.count + Self.tagSize
        let header = UInt32(ciphertextCount)
        out.reserveCapacity(minimumWritableBytes: 4 + ciphertextCount)
        out.writeInteger(header)
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: ciphertextCount) { destination in
            withUnsafeBytes(of: header.bigEndian) { ad in
                key.seal(into: destination.baseAddress!, plaintext: plaintext, ad: ad, index: index)
            }
            return ciphertextCount
        }
    }

    public mutating func seal(_ plaintext: ByteBuffer, into out: inout ByteBuffer) {
        plaintext.withUnsafeReadableBytes { seal($0, into: &out) }
    }

    public mutating func seal(_ plaintext: [UInt8], into out: inout ByteBuffer) {
        plaintext.withUnsafeBytes { seal($0, into: &out) }
    }
}

/// Opens the records of one direction of a link, in order. The first failure poisons it: every
/// later call fails the same way, since the stream can no longer be trusted.
public struct RecordOpener: Sendable {
    var direction: RecordDirection
    var failure: RecordError?

    init(cipher: PeerCipher, key: inout [UInt8], settings: RecordSettings) {
        direction = RecordDirection(key: RecordKey(cipher: cipher, consuming: &key), settings: settings)
    }

    public var cipher: PeerCipher { direction.key.cipher }
    public var settings: RecordSettings { direction.settings }

    /// The plaintext of the next whole record in `buffer`, or nil (consuming nothing) when the
    /// record is not complete yet. The length is checked against `maxPlaintext` as soon as its 4
    /// bytes are there, before waiting for or allocating anything. Decrypts into a new buffer
    /// (one allocation per record, at most `maxPlaintext` bytes); `buffer` is only read.
    public mutating func next(from buffer: inout ByteBuffer) throws(RecordError) -> ByteBuffer? {
        var plaintext = ByteBuffer()
        guard let count = try next(from: &buffer, appendingTo: &plaintext) else { return nil }
        precondition(plaintext.readableBytes == count)
        return plaintext
    }

    /// Like `next(from:)`, but decrypts at the end of `plaintexts` and returns the record's
    /// plaintext length (nil, appending nothing, when the record is not complete yet). A caller
    /// that opens every record of a read into one buffer, slices it only afterwards, and clears
    /// it for the next read reuses its storage whenever the slices are gone: no allocation and
    /// no fresh pages per record. Nothing is appended unless the record authenticates.
    public mutating func next(from buffer: inout ByteBuffer, appendingTo plaintexts: inout ByteBuffer) throws(RecordError) -> Int? {
        if let failure { throw failure }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= RecordSealer.tagSize else { return try fail(.authenticationFailed) }
        let plaintextCount = Int(length) - RecordSealer.tagSize
        guard plaintextCount <= direction.settings.maxPlaintext else { return try fail(.oversized(plaintextCount)) }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }

        let index = direction.advance(plaintextCount: plaintextCount)
        let key = direction.key
        // Out of place, into the caller's buffer: decrypting in place would write into storage
        // that the caller's read buffer pool or earlier records' slices may share, and every
        // such write would copy the whole buffer first.
        var authentic = false
        buffer.withUnsafeReadableBytes { bytes in
            _ = plaintexts.writeWithUnsafeMutableBytes(minimumWritableBytes: plaintextCount) { out in
                authentic = key.open(
                    bytes.baseAddress! + 4, into: out.baseAddress!, count: plaintextCount,
                    ad: UnsafeRawBufferPointer(rebasing: bytes[0..<4]), index: index)
                return authentic ? plaintextCount : 0
            }
        }
        guard authentic else { return try fail(.authenticationFailed) }
        buffer.moveReaderIndex(forwardBy: 4 + Int(length))
        return plaintextCount
    }

    /// The bytes of the next record (header, ciphertext and tag) once its length header is in
    /// `buffer`, or nil before that; checked against the limits like `next`.
    public func nextRecordSize(in buffer: ByteBuffer) throws(RecordError) -> Int? {
        if let failure { throw failure }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= RecordSealer.tagSize, Int(length) - RecordSealer.tagSize <= direction.settings.maxPlaintext else {
            return nil  // `next` fails the stream with the reason
        }
        return 4 + Int(length)
    }

    private mutating func fail<T>(_ error: RecordError) throws(RecordError) -> T? {
        failure = error
        throw error
    }

    /// At the end of the stream: bytes left in `remaining` are a record cut short.
    public func finish(remaining: ByteBuffer) throws(RecordError) {
        if let failure { throw failure }
        guard remaining.readableBytes == 0 else { throw .truncated(remaining.readableBytes) }
    }
}

/// One direction's key and counters, advanced identically by its sealer and its opener.
struct RecordDirection: Sendable {
    static let rekeyLabel = "skein record rekey v1"
    private(set) var key: RecordKey
    let settings: RecordSettings
    private var records: UInt64 = 0
    private var bytes: UInt64 = 0

    init(key: RecordKey, settings: RecordSettings) {
        self.key = key
        self.settings = settings
    }

    /// The index (nonce) of the next record under the current key, rekeying first when the
    /// current key has reached either limit. The old key is wiped when its last holder drops it.
    mutating func advance(plaintextCount: Int) -> UInt64 {
        if records >= settings.rekeyAfterRecords || bytes >= settings.rekeyAfterBytes {
            key = key.next()
            records = 0
            bytes = 0
        }
        let index = records
        records += 1
        bytes += UInt64(plaintextCount)
        return index
    }
}

/// A record key, ready to use: for AES-256-GCM its expanded state in 16-byte-aligned memory
/// (libsodium requires it; Swift would not align an imported struct so), for ChaCha20-Poly1305
/// the raw key. Wiped on deinit.
///
/// AES-256-GCM records of `largeRecord` bytes or more go through OpenSSL's libcrypto instead,
/// about twice as fast there (VAES/VPCLMULQDQ; libsodium 1.0.18 has neither); below that its
/// fixed cost per call is higher, so small records stay with libsodium. The bytes are the same
/// either way (AES-256-GCM, the same nonce and associated data), so either end may use either.
final class RecordKey: @unchecked Sendable {
    // @unchecked: the key and libsodium's state are written once in init and only read
    // afterwards; the OpenSSL contexts, which each call changes, are used under their lock.
    let cipher: PeerCipher
    private let key: SecretKey
    private let aesState: UnsafeMutableRawPointer?
    private static let aesStateSize = MemoryLayout<crypto_aead_aes256gcm_state>.size
    /// OpenSSL's AES-256-GCM with this key, for large records: one context to seal, one to open.
    private let large: LargeRecordCipher?
    /// Records at least this long (plaintext) use OpenSSL's AES-256-GCM.
    static let largeRecord = 2048

    convenience init(cipher: PeerCipher, consuming bytes: inout [UInt8]) {
        self.init(cipher: cipher, key: SecretKey(consuming: &bytes))
    }

    private init(cipher: PeerCipher, key: SecretKey) {
        Sodium.initialize()
        self.cipher = cipher
        self.key = key
        switch cipher {
        case .aes256gcm:
            precondition(crypto_aead_aes256gcm_is_available() == 1, "AES-256-GCM is not available on this CPU")
            let state = UnsafeMutableRawPointer.allocate(byteCount: Self.aesStateSize, alignment: 16)
            crypto_aead_aes256gcm_beforenm(state.bindMemory(to: crypto_aead_aes256gcm_state.self, capacity: 1), key.pointer)
            aesState = state
            large = LargeRecordCipher(key: key.pointer)
        case .chacha20poly1305:
            aesState = nil
            large = nil
        }
    }

    func next() -> RecordKey {
        RecordKey(cipher: cipher, key: key.next(label: RecordDirection.rekeyLabel))
    }

    /// Writes ciphertext then tag (plaintext.count + 16 bytes) at `destination`.
    func seal(into destination: UnsafeMutableRawPointer, plaintext: UnsafeRawBufferPointer, ad: UnsafeRawBufferPointer, index: UInt64) {
        let c = destination.assumingMemoryBound(to: UInt8.self)
        let m = plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self)
        let mac = c + plaintext.count
        let a = ad.baseAddress!.assumingMemoryBound(to: UInt8.self)
        if plaintext.count >= Self.largeRecord, let large {
            let sealed = withNonce(index) { nonce in
                large.seal(into: c, tag: mac, plaintext: m!, count: plaintext.count, ad: a, adCount: ad.count, nonce: nonce)
            }
            precondition(sealed, "AEAD encryption failed")
            return
        }
        let rc = withNonce(index) { nonce in
            switch cipher {
            case .aes256gcm:
                crypto_aead_aes256gcm_encrypt_detached_afternm(
                    c, mac, nil, m, UInt64(plaintext.count), a, UInt64(ad.count), nil, nonce,
                    aesState!.assumingMemoryBound(to: crypto_aead_aes256gcm_state.self))
            case .chacha20poly1305:
                crypto_aead_chacha20poly1305_ietf_encrypt_detached(
                    c, mac, nil, m, UInt64(plaintext.count), a, UInt64(ad.count), nil, nonce, key.pointer)
            }
        }
        precondition(rc == 0, "AEAD encryption failed")
    }

    /// Verifies and decrypts `count` bytes of ciphertext followed by the tag, in place.
    func open(inPlace text: UnsafeMutableRawPointer, count: Int, ad: UnsafeRawBufferPointer, index: UInt64) -> Bool {
        open(UnsafeRawPointer(text), into: text, count: count, ad: ad, index: index)
    }

    /// Decrypts `count` bytes at `ciphertext` (followed by the tag) into `plaintext`, which may be
    /// the same address. False if the tag does not verify; `plaintext`'s bytes are then
    /// unspecified (OpenSSL decrypts before it verifies), and must not be used.
    func open(_ ciphertext: UnsafeRawPointer, into plaintext: UnsafeMutableRawPointer, count: Int, ad: UnsafeRawBufferPointer, index: UInt64) -> Bool {
        let c = ciphertext.assumingMemoryBound(to: UInt8.self)
        let m = plaintext.assumingMemoryBound(to: UInt8.self)
        let mac = c + count
        let a = ad.baseAddress!.assumingMemoryBound(to: UInt8.self)
        if count >= Self.largeRecord, let large {
            return withNonce(index) { nonce in
                large.open(c, into: m, count: count, tag: mac, ad: a, adCount: ad.count, nonce: nonce)
            }
        }
        let rc = withNonce(index) { nonce in
            switch cipher {
            case .aes256gcm:
                crypto_aead_aes256gcm_decrypt_detached_afternm(
                    m, nil, c, UInt64(count), mac, a, UInt64(ad.count), nonce,
                    aesState!.assumingMemoryBound(to: crypto_aead_aes256gcm_state.self))
            case .chacha20poly1305:
                crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                    m, nil, c, UInt64(count), mac, a, UInt64(ad.count), nonce, key.pointer)
            }
        }
        return rc == 0
    }

    /// The 96-bit nonce: four zero bytes, then the record index big-endian.
    private func withNonce<R>(_ index: UInt64, _ body: (UnsafePointer<UInt8>) -> R) -> R {
        withUnsafeBytes(of: (UInt64(0), index.bigEndian)) { body($0.baseAddress!.assumingMemoryBound(to: UInt8.self) + 4) }
    }

    deinit {
        if let aesState {
            sodium_memzero(aesState, Self.aesStateSize)
            aesState.deallocate()
        }
    }
}

/// OpenSSL's AES-256-GCM for one key: a context to seal and one to open, each keyed once; every
/// record only sets its nonce. A context changes with every call, so each is used under a lock
/// (uncontended: one link direction uses a key from its event loop).
final class LargeRecordCipher: @unchecked Sendable {
    // @unchecked: the contexts are only touched under `lock`.
    private let sealing: OpaquePointer
    private let opening: OpaquePointer
    private let lock = NIOLock()

    /// Nil if libcrypto cannot set up the cipher (records then all go through libsodium).
    init?(key: UnsafePointer<UInt8>) {
        guard let sealing = EVP_CIPHER_CTX_new() else { return nil }
        guard let opening = EVP_CIPHER_CTX_new() else {
            EVP_CIPHER_CTX_free(sealing)
            return nil
        }
        guard EVP_EncryptInit_ex(sealing, EVP_aes_256_gcm(), nil, key, nil) == 1,
            EVP_DecryptInit_ex(opening, EVP_aes_256_gcm(), nil, key, nil) == 1
        else {
            EVP_CIPHER_CTX_free(sealing)
            EVP_CIPHER_CTX_free(opening)
            return nil
        }
        self.sealing = sealing
        self.opening = opening
    }

    /// Writes `count` bytes of ciphertext at `c` and the 16-byte tag at `tag`.
    func seal(
        into c: UnsafeMutablePointer<UInt8>, tag: UnsafeMutablePointer<UInt8>, plaintext m: UnsafePointer<UInt8>, count: Int,
        ad: UnsafePointer<UInt8>, adCount: Int, nonce: UnsafePointer<UInt8>
    ) -> Bool {
        var written: Int32 = 0
        var finished: Int32 = 0
        lock.lock()
        defer { lock.unlock() }
        return EVP_EncryptInit_ex(sealing, nil, nil, nil, nonce) == 1
            && EVP_EncryptUpdate(sealing, nil, &written, ad, Int32(adCount)) == 1
            && EVP_EncryptUpdate(sealing, c, &written, m, Int32(count)) == 1 && Int(written) == count
            && EVP_EncryptFinal_ex(sealing, c + count, &finished) == 1 && finished == 0
            && EVP_CIPHER_CTX_ctrl(sealing, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1
    }

    /// Decrypts `count` bytes at `c` into `m` (which may be `c`) and checks `tag`.
    func open(
        _ c: UnsafePointer<UInt8>, into m: UnsafeMutablePointer<UInt8>, count: Int, tag: UnsafePointer<UInt8>,
        ad: UnsafePointer<UInt8>, adCount: Int, nonce: UnsafePointer<UInt8>
    ) -> Bool {
        var written: Int32 = 0
        var finished: Int32 = 0
        lock.lock()
        defer { lock.unlock() }
        return EVP_DecryptInit_ex(opening, nil, nil, nil, nonce) == 1
            && EVP_DecryptUpdate(opening, nil, &written, ad, Int32(adCount)) == 1
            && EVP_DecryptUpdate(opening, m, &written, c, Int32(count)) == 1 && Int(written) == count
            && EVP_CIPHER_CTX_ctrl(opening, EVP_CTRL_GCM_SET_TAG, 16, UnsafeMutableRawPointer(mutating: tag)) == 1
            && EVP_DecryptFinal_ex(opening, m + count, &finished) == 1
    }

    deinit {
        // Frees and wipes the expanded keys.
        EVP_CIPHER_CTX_free(sealing)
        EVP_CIPHER_CTX_free(opening)
    }
}
