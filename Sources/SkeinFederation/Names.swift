/// Network names and `name@network` addresses (Docs/federation.md §1). Pure.
public enum NetworkName {
    /// Longest network name, in bytes.
    public static let maxLength = 64

    /// 1–64 bytes of `A–Z a–z 0–9 . _ -`.
    public static func isValid(_ name: some StringProtocol) -> Bool {
        let utf8 = name.utf8
        guard !utf8.isEmpty, utf8.count <= maxLength else { return false }
        return utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
                || byte == 0x2e || byte == 0x5f || byte == 0x2d
        }
    }

    /// The network name both sides of a federation use in their gateway links' handshake:
    /// `federation:A+B`, the two names in byte order.
    public static func federation(_ a: String, _ b: String) -> String {
        let (first, second) = Array(a.utf8).lexicographicallyPrecedes(Array(b.utf8)) ? (a, b) : (b, a)
        return "federation:\(first)+\(second)"
    }
}

/// A cluster or topic name as a client wrote it: a name in this network, or `name@network`.
public struct FederatedName: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The name inside its network.
    public var name: String
    /// The other network, or nil for this one.
    public var network: String?

    public init(name: String, network: String?) {
        self.name = name
        self.network = network
    }

    /// Splits `text` at its last `@` when what follows is a valid network name; `name@local`
    /// is just `name`.
    public init(_ text: String, localNetwork: String) {
        guard let at = text.utf8.lastIndex(of: UInt8(ascii: "@")) else {
            self.init(name: text, network: nil)
            return
        }
        let suffix = text[text.utf8.index(after: at)...]
        guard NetworkName.isValid(suffix) else {
            self.init(name: text, network: nil)
            return
        }
        let name = String(text[..<at])
        let network = String(suffix)
        self.init(name: name, network: network == localNetwork ? nil : network)
    }

    /// Whether `text` names something in another network than `localNetwork`.
    public static func isRemote(_ text: String, localNetwork: String) -> Bool {
        // Fast path: most names have no '@' at all.
        guard text.utf8.contains(UInt8(ascii: "@")) else { return false }
        return FederatedName(text, localNetwork: localNetwork).network != nil
    }

    /// `name@network` (or `name` in this network): the form clients use.
    public var description: String {
        network.map { "\(name)@\($0)" } ?? name
    }
}
