import CSodium
import Testing
@testable import SkeinCrypto

/// AES-256-GCM records of `RecordKey.largeRecord` bytes and more go through OpenSSL: the bytes
/// must be exactly libsodium's, both ways, so either end of a link may use either library.
@Suite struct LargeRecordTests {
    static let keyBytes = (0..<32).map { UInt8(5 * $0 + 1) }

    /// libsodium's AES-256-GCM of `plaintext`, nonce `00000000 ‖ index`, as ciphertext ‖ tag.
    static func sodiumSeal(_ plaintext: [UInt8], ad: [UInt8], index: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plaintext.count + 16)
        let nonce = [0, 0, 0, 0] + withUnsafeBytes(of: index.bigEndian, Array.init)
        let count = out.count
        out.withUnsafeMutableBufferPointer { c in
            _ = crypto_aead_aes256gcm_encrypt(
                c.baseAddress!, nil, plaintext, UInt64(plaintext.count), ad, UInt64(ad.count), nil, nonce, keyBytes)
        }
        precondition(count == out.count)
        return out
    }

    @Test("sealed by OpenSSL above the threshold, by libsodium below: the same bytes; each opens the other's",
          arguments: [1000, 2047, 2048, 2049, 16_384, 65_536])
    func identicalBytes(size: Int) throws {
        guard PeerCipher.aes256gcm.isAvailable else { return }
        var bytes = Self.keyBytes
        let key = RecordKey(cipher: .aes256gcm, consuming: &bytes)
        let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let ad: [UInt8] = [0, 0, 0x10, 0x10]
        var sealed = [UInt8](repeating: 0, count: size + 16)
        sealed.withUnsafeMutableBytes { out in
            plaintext.withUnsafeBytes { m in ad.withUnsafeBytes { a in key.seal(into: out.baseAddress!, plaintext: m, ad: a, index: 9) } }
        }
        let reference = Self.sodiumSeal(plaintext, ad: ad, index: 9)
        #expect(sealed == reference)
        // Opens libsodium's record, and refuses it with one bit changed (tag or body) or another index.
        func opens(_ record: [UInt8], index: UInt64) -> [UInt8]? {
            var out = [UInt8](repeating: 0, count: size)
            let ok = record.withUnsafeBytes { c in
                out.withUnsafeMutableBytes { m in
                    ad.withUnsafeBytes { a in key.open(c.baseAddress!, into: m.baseAddress ?? UnsafeMutableRawPointer(mutating: c.baseAddress!), count: size, ad: a, index: index) }
                }
            }
            return ok ? out : nil
        }
        #expect(opens(reference, index: 9) == plaintext)
        #expect(opens(reference, index: 10) == nil)
        var tampered = reference
        tampered[tampered.count - 1] ^= 1
        #expect(opens(tampered, index: 9) == nil)
        if size > 0 {
            var body = reference
            body[size / 2] ^= 0x80
            #expect(opens(body, index: 9) == nil)
        }
    }
}
