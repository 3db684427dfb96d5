/// The public name of a network key: BLAKE2b with an 8-byte output, keyed with the key, over
/// `skein key id v1`. Its description is the same 16 lowercase hex digits as `NetworkKey.id`.
public struct KeyID: Hashable, Sendable, CustomStringConvertible {
    public static let size = 8
    /// The 8 bytes, big-endian.
    public let value: UInt64

    public init(value: UInt64) { self.value = value }

    /// The id from its 8 wire bytes.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.size else { return nil }
        value = bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    init(key: NetworkKey) {
        let digest = Blake2b.hash(Array("skein key id v1".utf8), key: key.bytes, outputLength: Self.size)
        value = digest.reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// The 8 wire bytes, big-endian.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.appendBigEndian(value)
        return out
    }

    public var description: String {
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

/// The keys a relay holds: one primary key, used to initiate links and seal datagrams, and any
/// number of accepted keys that peers may still (or already) use. Rotation (Docs/keys.md) adds a
/// new key as accepted everywhere, then makes it primary everywhere, then removes the old one.
public struct Keyring: Sendable {
    /// The key this relay sends with and initiates with.
    public let primary: NetworkKey
    /// Every key, primary first, then the accepted ones in order, without duplicates.
    public let keys: [NetworkKey]
    /// `keys`' ids, in the same order.
    public let keyIDs: [KeyID]

    /// A keyring from its keys. An accepted key equal to the primary or to an earlier accepted
    /// key is dropped: it adds nothing.
    public init(primary: NetworkKey, accepted: [NetworkKey] = []) {
        var keys = [primary]
        for key in accepted where !keys.contains(key) { keys.append(key) }
        self.primary = primary
        self.keys = keys
        self.keyIDs = keys.map(\.keyID)
    }

    public var primaryID: KeyID { keyIDs[0] }

    /// The key named `id`, if this keyring holds it.
    public func key(for id: KeyID) -> NetworkKey? {
        keyIDs.firstIndex(of: id).map { keys[$0] }
    }

    /// Parses a keyring file: one `skein-key-v1:<64 hex>` per line, the first being the primary
    /// key. Blank lines and lines starting with `#` are ignored, so a single-key file is a valid
    /// keyring. Repeated keys are kept once, at their first position.
    public init(fileContents: String) throws(KeyError) {
        var keys: [NetworkKey] = []
        var lineNumber = 0
        // Split on the byte: as Characters, "\r\n" is one grapheme and would not split on "\n".
        for line in fileContents.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            let text = String(decoding: line, as: UTF8.self).trimmingWhitespace()
            if text.isEmpty || text.hasPrefix("#") { continue }
            do {
                keys.append(try NetworkKey(fileContents: text))
            } catch {
                guard case .malformed(let why) = error else { throw error }
                throw .malformed("line \(lineNumber): \(why)")
            }
        }
        guard let primary = keys.first else { throw .empty }
        self.init(primary: primary, accepted: Array(keys.dropFirst()))
    }

    /// Loads a keyring from one or more files, their keys concatenated in order; the first key of
    /// the first file is the primary. Each file must be readable by its owner only and hold at
    /// least one well-formed key (the same checks as `NetworkKey.load(fromFile:)`).
    public static func load(fromFiles paths: [String]) throws(KeyError) -> Keyring {
        guard !paths.isEmpty else { throw .empty }
        var keys: [NetworkKey] = []
        for path in paths {
            let text = try NetworkKey.readKeyFile(path)
            do {
                keys += try Keyring(fileContents: text).keys
            } catch {
                throw error.located(at: path)
            }
        }
        return Keyring(primary: keys[0], accepted: Array(keys.dropFirst()))
    }
}
