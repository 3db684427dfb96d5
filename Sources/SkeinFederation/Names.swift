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

/// Topic patterns of `skein/2` (Docs/skein-2.md, "Wildcard topics"): tokens separated by `.`,
/// where `*` matches exactly one token and a last `>` one or more.
public enum TopicPattern {
    /// Whether `topic` is a pattern (has a `*` token, or a `>` token), as a `skein/2` SUBSCRIBE
    /// reads it. A topic without one is literal.
    /// One pass over the bytes, no allocation: a `skein/2` publish is checked with it.
    public static func isPattern(_ topic: String) -> Bool {
        var tokenLength = 0
        var wild = false
        for byte in topic.utf8 {
            if byte == UInt8(ascii: ".") {
                if tokenLength == 1 && wild { return true }
                tokenLength = 0
                wild = false
            } else {
                tokenLength += 1
                wild = tokenLength == 1 && (byte == UInt8(ascii: "*") || byte == UInt8(ascii: ">"))
            }
        }
        return tokenLength == 1 && wild
    }

    /// Why `pattern` is not a valid pattern (an empty token, `>` before the end), or nil.
    public static func problem(with pattern: String) -> String? {
        let tokens = pattern.split(separator: ".", omittingEmptySubsequences: false)
        if tokens.contains(where: \.isEmpty) { return "a pattern has no empty tokens" }
        if tokens.dropLast().contains(">") { return "'>' may only be the last token" }
        return nil
    }

    /// Whether a concrete topic is one a `skein/2` client may publish to (no wildcard token).
    public static func isPublishable(_ topic: String) -> Bool { !isPattern(topic) }

    /// Whether `pattern` matches `topic`, token by token (the reference the index is tested
    /// against).
    public static func matches(_ pattern: String, _ topic: String) -> Bool {
        let p = pattern.split(separator: ".", omittingEmptySubsequences: false)
        let t = topic.split(separator: ".", omittingEmptySubsequences: false)
        for (i, token) in p.enumerated() {
            if token == ">" && i == p.count - 1 { return t.count > i }
            guard i < t.count, token == "*" || token == t[i] else { return false }
        }
        return p.count == t.count
    }

    /// `matches` for names that may carry a network (`orders.*@us` and `orders.eu@us`): the
    /// networks must be the same, and the bare pattern must match the bare topic.
    public static func matches(federated pattern: String, _ topic: String) -> Bool {
        let p = FederatedName(pattern, localNetwork: "")
        let t = FederatedName(topic, localNetwork: "")
        return p.network == t.network && matches(p.name, t.name)
    }
}
