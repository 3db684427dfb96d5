import CSodium

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A network's 32-byte secret key. Relays that hold the same key trust each other.
///
/// File format (Docs/keys.md): one line, `skein-key-v1:` followed by the key as 64 lowercase
/// hex digits, then a newline. The file must be readable by its owner only (mode 0600 or
/// stricter).
public struct NetworkKey: Sendable, Equatable {
    public static let size = 32
    static let filePrefix = "skein-key-v1:"

    /// The raw key bytes. Never logged, never sent.
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) throws(KeyError) {
        guard bytes.count == Self.size else { throw .wrongLength(bytes.count) }
        self.bytes = bytes
    }

    /// A fresh random key from libsodium's CSPRNG.
    public static func generate() -> NetworkKey {
        Sodium.initialize()
        var bytes = [UInt8](repeating: 0, count: size)
        randombytes_buf(&bytes, size)
        return try! NetworkKey(bytes: bytes)
    }

    /// A short public identifier: the first 8 bytes of BLAKE2b keyed with the key over a fixed
    /// label, in hex. It names the key in logs and on the wire without revealing it.
    public var id: String {
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: 8)
        let label = Array("skein key id v1".utf8)
        _ = crypto_generichash(&out, out.count, label, UInt64(label.count), bytes, bytes.count)
        return out.map { hex($0) }.joined()
    }

    /// The key's id as a value (`id` is its hex text).
    public var keyID: KeyID { KeyID(key: self) }

    /// The key file's text.
    public var fileContents: String {
        Self.filePrefix + bytes.map { hex($0) }.joined() + "\n"
    }

    /// Parses a key file's text.
    public init(fileContents: String) throws(KeyError) {
        let text = fileContents.trimmingWhitespace()
        guard !text.isEmpty else { throw .empty }
        guard text.hasPrefix(Self.filePrefix) else { throw .malformed("it does not start with \(Self.filePrefix)") }
        let digits = Array(text.dropFirst(Self.filePrefix.count).utf8)
        guard digits.count == Self.size * 2 else {
            throw .malformed("expected \(Self.size * 2) hex digits, found \(digits.count)")
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Self.size)
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let high = hexValue(digits[i]), let low = hexValue(digits[i + 1]) else {
                throw .malformed("non-hex character in the key")
            }
            bytes.append(high << 4 | low)
        }
        try self.init(bytes: bytes)
    }

    /// Writes a new key file readable by its owner only. Refuses to overwrite unless `overwrite`.
    public func write(toFile path: String, overwrite: Bool = false) throws(KeyError) {
        let flags = O_WRONLY | O_CREAT | (overwrite ? O_TRUNC : O_EXCL)
        let fd = open(path, flags, 0o600)
        guard fd >= 0 else { throw .io(path, String(cString: strerror(errno))) }
        defer { close(fd) }
        // O_CREAT's mode does not apply to an existing file: tighten it explicitly.
        guard fchmod(fd, 0o600) == 0 else { throw .io(path, String(cString: strerror(errno))) }
        let data = Array(fileContents.utf8)
        guard Glibc.write(fd, data, data.count) == data.count else { throw .io(path, String(cString: strerror(errno))) }
    }

    /// Loads a key file, refusing one that others can read, that is empty, or malformed.
    public static func load(fromFile path: String) throws(KeyError) -> NetworkKey {
        let text = try readKeyFile(path)
        do {
            return try NetworkKey(fileContents: text)
        } catch {
            throw error.located(at: path)
        }
    }

    /// A key file's text, after checking that only its owner can read or write it. Key files
    /// and keyrings are a few lines; anything past `limit` bytes is refused rather than read.
    static func readKeyFile(_ path: String, limit: Int = 65_536) throws(KeyError) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .io(path, String(cString: strerror(errno))) }
        guard info.st_mode & 0o077 == 0 else {
            throw .tooPermissive(path, mode: info.st_mode & 0o777)
        }
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw .io(path, String(cString: strerror(errno))) }
        defer { close(fd) }
        var data = [UInt8](repeating: 0, count: limit + 1)
        var count = 0
        while count < data.count {
            let n = data.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw .io(path, String(cString: strerror(errno))) }
            if n == 0 { break }
            count += n
        }
        guard count <= limit else { throw .inFile(path, "larger than \(limit) bytes: not a key file") }
        defer { wipe(&data) }
        return String(decoding: data.prefix(count), as: UTF8.self)
    }

    public static func == (a: NetworkKey, b: NetworkKey) -> Bool {
        a.bytes.count == b.bytes.count && sodium_memcmp(a.bytes, b.bytes, a.bytes.count) == 0
    }
}

/// Why a key could not be made, read or written.
public enum KeyError: Error, Equatable, CustomStringConvertible {
    case wrongLength(Int)
    case empty
    case malformed(String)
    case tooPermissive(String, mode: mode_t)
    case io(String, String)
    case inFile(String, String)

    public var description: String {
        switch self {
        case .wrongLength(let n): "a network key is 32 bytes, not \(n)"
        case .empty: "the key file is empty"
        case .malformed(let why): "the key file is malformed: \(why)"
        case .tooPermissive(let path, let mode):
            "\(path) is readable by others (mode \(String(mode, radix: 8))); run: chmod 600 \(path)"
        case .io(let path, let why): "\(path): \(why)"
        case .inFile(let path, let why): "\(path): \(why)"
        }
    }

    func located(at path: String) -> KeyError {
        switch self {
        case .io, .tooPermissive, .inFile: self
        default: .inFile(path, description)
        }
    }
}

enum Sodium {
    static func initialize() {
        // sodium_init is idempotent and thread-safe; it returns 1 when already initialized.
        precondition(sodium_init() >= 0, "libsodium failed to initialize")
    }
}

private func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef".utf8)
    return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0xf)]], as: UTF8.self)
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
    default: nil
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(scalars[first...last])
    }
}
