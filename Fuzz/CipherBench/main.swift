// Seal throughput of libsodium's AEADs, through the same calls the record layer makes
// (AES-256-GCM with a precomputed, 16-byte-aligned state; ChaCha20-Poly1305-IETF and
// XChaCha20-Poly1305 detached). Results and the command: Docs/peer-protocol.md §2.5.
//   swiftc -O -I Sources/CSodium Fuzz/CipherBench/main.swift -lsodium -o /tmp/cipher-bench && /tmp/cipher-bench

import CSodium
#if canImport(Glibc)
import Glibc
#endif

func seconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

precondition(sodium_init() >= 0)
let key = [UInt8](repeating: 7, count: 32)
let aesState = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<crypto_aead_aes256gcm_state>.size, alignment: 16)
    .bindMemory(to: crypto_aead_aes256gcm_state.self, capacity: 1)
let aesAvailable = crypto_aead_aes256gcm_is_available() == 1
if aesAvailable { crypto_aead_aes256gcm_beforenm(aesState, key) }
let ad: [UInt8] = [0, 0, 0, 0]

print("libsodium \(String(cString: sodium_version_string())), AES-256-GCM available: \(aesAvailable)")
print("cipher                 size   MB/s      ns/record")
for size in [64, 1024, 65_536] {
    let message = [UInt8](repeating: 0xa5, count: size)
    var out = [UInt8](repeating: 0, count: size)
    var tag = [UInt8](repeating: 0, count: 16)
    var nonce = [UInt8](repeating: 0, count: 24)
    let ciphers: [(String, () -> Void)] = [
        ("AES-256-GCM", { _ = crypto_aead_aes256gcm_encrypt_detached_afternm(&out, &tag, nil, message, UInt64(size), ad, 4, nil, nonce, aesState) }),
        ("ChaCha20-Poly1305", { _ = crypto_aead_chacha20poly1305_ietf_encrypt_detached(&out, &tag, nil, message, UInt64(size), ad, 4, nil, nonce, key) }),
        ("XChaCha20-Poly1305", { _ = crypto_aead_xchacha20poly1305_ietf_encrypt_detached(&out, &tag, nil, message, UInt64(size), ad, 4, nil, nonce, key) }),
    ]
    for (name, seal) in ciphers where name != "AES-256-GCM" || aesAvailable {
        for _ in 0..<1000 { seal() }  // warm up
        var records = 0
        let start = seconds()
        var elapsed = 0.0
        while elapsed < 1.0 {
            for _ in 0..<256 { nonce[0] &+= 1; seal() }
            records += 256
            elapsed = seconds() - start
        }
        let mbps = Double(records * size) / elapsed / 1e6
        let ns = elapsed / Double(records) * 1e9
        print(name + String(repeating: " ", count: 20 - name.count), String(size).leftPad(7), String(Int(mbps)).leftPad(7), String(Int(ns)).leftPad(12))
    }
}

extension String {
    func leftPad(_ width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}
