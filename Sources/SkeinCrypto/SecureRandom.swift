import CSodium

/// Randomness from libsodium's CSPRNG, for the shells: node ids, ephemeral secrets, nonces.
/// Pure cores never call this; they take random bytes as inputs.
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: count)
        randombytes_buf(&out, count)
        return out
    }

    public static func uint64() -> UInt64 {
        bytes(8).reduce(0) { $0 << 8 | UInt64($1) }
    }
}
