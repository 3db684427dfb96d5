import CSodium

/// The few libsodium primitives Skein builds on, behind small Swift helpers. Everything here is
/// single-shot: libsodium's multi-part states carry alignment attributes Swift does not honour,
/// and no caller is on a path where concatenating the input first would matter.
enum Blake2b {
    /// BLAKE2b (libsodium `crypto_generichash`) of `message`, keyed when `key` is not empty.
    /// `outputLength` is 1...64 (16 or more where it must resist forgery), `key` 0 or 16...64 bytes.
    static func hash(_ message: [UInt8], key: [UInt8] = [], outputLength: Int = 32) -> [UInt8] {
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: outputLength)
        let rc = key.withUnsafeBufferPointer { k in
            crypto_generichash(&out, outputLength, message, UInt64(message.count), k.baseAddress, k.count)
        }
        precondition(rc == 0, "crypto_generichash rejected its parameters")
        return out
    }

    /// A 32-byte subkey of `key` for one purpose: BLAKE2b keyed with `key` over `label`, then
    /// `context`. Distinct labels give independent keys (BLAKE2b keyed is a PRF).
    static func derive(from key: [UInt8], label: String, context: [UInt8] = []) -> [UInt8] {
        hash(Array(label.utf8) + context, key: key)
    }
}

/// X25519 (libsodium `crypto_scalarmult`).
enum X25519 {
    static let size = 32

    static func publicKey(secret: [UInt8]) -> [UInt8] {
        Sodium.initialize()
        precondition(secret.count == size, "an X25519 secret is 32 bytes")
        var out = [UInt8](repeating: 0, count: size)
        precondition(crypto_scalarmult_base(&out, secret) == 0, "crypto_scalarmult_base failed")
        return out
    }

    /// The shared secret, or nil when the peer's public key is of low order (the result would be
    /// all zeros, which libsodium reports as failure): such a key contributes no secret.
    static func sharedSecret(secret: [UInt8], peerPublic: [UInt8]) -> [UInt8]? {
        Sodium.initialize()
        precondition(secret.count == size && peerPublic.count == size)
        var out = [UInt8](repeating: 0, count: size)
        guard crypto_scalarmult(&out, secret, peerPublic) == 0 else { return nil }
        return out
    }
}

/// Constant-time equality of two byte strings of the same length.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.count == b.count && sodium_memcmp(a, b, a.count) == 0
}

/// Overwrites `bytes` with zeros in a way the optimizer cannot remove.
func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) }
}

/// A 32-byte symmetric key that is wiped when the last copy of it goes away. Immutable: a rekey
/// makes a new `SecretKey`, so value types holding one keep value semantics.
final class SecretKey: @unchecked Sendable {
    // @unchecked: the pointer is written once in init and only read afterwards.
    let pointer: UnsafeMutablePointer<UInt8>
    static let size = 32

    /// Takes `bytes` and wipes the caller's copy.
    init(consuming bytes: inout [UInt8]) {
        precondition(bytes.count == Self.size)
        pointer = .allocate(capacity: Self.size)
        pointer.initialize(from: bytes, count: Self.size)
        wipe(&bytes)
    }

    /// The next key in a deterministic chain: BLAKE2b keyed with this key over `label`.
    func next(label: String) -> SecretKey {
        let labelBytes = Array(label.utf8)
        var out = [UInt8](repeating: 0, count: Self.size)
        precondition(crypto_generichash(&out, Self.size, labelBytes, UInt64(labelBytes.count), pointer, Self.size) == 0)
        return SecretKey(consuming: &out)
    }

    deinit {
        sodium_memzero(pointer, Self.size)
        pointer.deallocate()
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}

extension ArraySlice where Element == UInt8 {
    func readBigEndian<T: FixedWidthInteger>(at offset: Int, as: T.Type = T.self) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size { value = value << 8 | T(self[startIndex + offset + i]) }
        return value
    }
}
