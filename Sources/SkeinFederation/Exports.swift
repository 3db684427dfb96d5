/// What one network lets another do to its clusters and topics (Docs/federation.md §2). Pure.
public struct ExportKinds: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let request = ExportKinds(rawValue: 1)
    public static let broadcast = ExportKinds(rawValue: 2)
    public static let tunnel = ExportKinds(rawValue: 4)
    public static let subscribe = ExportKinds(rawValue: 8)
    public static let publish = ExportKinds(rawValue: 16)
    public static let all: ExportKinds = [.request, .broadcast, .tunnel, .subscribe, .publish]

    static let names: [(String, ExportKinds)] = [
        ("request", .request), ("broadcast", .broadcast), ("tunnel", .tunnel), ("subscribe", .subscribe), ("publish", .publish),
    ]

    /// `request,tunnel` → [.request, .tunnel]; nil for an unknown or empty kind.
    public init?(parsing text: some StringProtocol) {
        var kinds: ExportKinds = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let kind = Self.names.first(where: { $0.0 == part })?.1 else { return nil }
            kinds.insert(kind)
        }
        guard !kinds.isEmpty else { return nil }
        self = kinds
    }

    /// `request,tunnel`.
    public var description: String {
        Self.names.filter { contains($0.1) }.map(\.0).joined(separator: ",")
    }
}

/// One export rule: these kinds, for names matching `pattern` (`*` matches any run of
/// characters, including none; every other character matches itself).
public struct ExportRule: Hashable, Sendable, CustomStringConvertible {
    public var kinds: ExportKinds
    public var pattern: String

    public init(kinds: ExportKinds, pattern: String) {
        self.kinds = kinds
        self.pattern = pattern
    }

    public func matches(_ name: String) -> Bool {
        glob(Array(pattern.utf8)[...], Array(name.utf8)[...])
    }

    public var description: String { "\(kinds) \(pattern)" }
}

/// Every rule a network exports to one other network. Nothing is allowed unless a rule says so.
public struct ExportTable: Hashable, Sendable {
    public var rules: [ExportRule]

    public init(_ rules: [ExportRule] = []) { self.rules = rules }

    public func allows(_ kind: ExportKinds, _ name: String) -> Bool {
        rules.contains { $0.kinds.contains(kind) && $0.matches(name) }
    }

    public var isEmpty: Bool { rules.isEmpty }
}

/// Glob match with `*` only: iterative, with one backtracking point (linear in practice,
/// O(n·m) at worst), so a hostile pattern or name cannot blow the stack or the clock.
func glob(_ pattern: ArraySlice<UInt8>, _ name: ArraySlice<UInt8>) -> Bool {
    let star = UInt8(ascii: "*")
    var p = pattern.startIndex
    var n = name.startIndex
    var starAt: Int?
    var resumeAt = name.startIndex
    while n < name.endIndex {
        if p < pattern.endIndex, pattern[p] == star {
            starAt = p
            resumeAt = n
            p += 1
        } else if p < pattern.endIndex, pattern[p] == name[n] {
            p += 1
            n += 1
        } else if let s = starAt {
            p = s + 1
            resumeAt += 1
            n = resumeAt
        } else {
            return false
        }
    }
    while p < pattern.endIndex, pattern[p] == star { p += 1 }
    return p == pattern.endIndex
}
