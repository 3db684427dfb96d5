/// One federation as configured on a gateway (Docs/federation.md §3).
public struct FederationSpec: Equatable, Sendable {
    /// The remote network's name.
    public var network: String
    /// `host:port` this gateway listens on for the remote network's gateways.
    public var listen: String?
    /// `host:port` of each remote gateway; this gateway dials them all.
    public var gateways: [String]
    /// The federation keyring's files: the first key is primary.
    public var keyFiles: [String]
    /// What this network exports to the remote one.
    public var exports: ExportTable

    public init(network: String, listen: String? = nil, gateways: [String] = [], keyFiles: [String] = [], exports: ExportTable = ExportTable()) {
        self.network = network
        self.listen = listen
        self.gateways = gateways
        self.keyFiles = keyFiles
        self.exports = exports
    }
}

/// A federation configuration that cannot be used; `line` is 1-based, nil for flags.
public struct FederationConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var line: Int?
    public var message: String

    public init(line: Int?, _ message: String) {
        self.line = line
        self.message = message
    }

    public var description: String {
        line.map { "line \($0): \(message)" } ?? message
    }
}

/// The federation file format (Docs/federation.md §3) and its checks. Pure: reading the file and
/// the key files is the caller's.
public enum FederationConfig {
    /// Parses a federation file. Each `federation NAME` starts a block; `listen`, `gateway`,
    /// `key-file` and `export KINDS PATTERN` belong to the block above them.
    public static func parse(_ text: String) throws(FederationConfigError) -> [FederationSpec] {
        var specs: [FederationSpec] = []
        var lineNumber = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            let content = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let words = content.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard let keyword = words.first else { continue }
            let arguments = Array(words.dropFirst())
            if keyword == "federation" {
                guard arguments.count == 1 else { throw FederationConfigError(line: lineNumber, "federation takes one network name") }
                specs.append(FederationSpec(network: arguments[0]))
                continue
            }
            guard !specs.isEmpty else {
                throw FederationConfigError(line: lineNumber, "\(keyword.debugDescription) outside a federation block (start one with `federation NAME`)")
            }
            switch keyword {
            case "listen":
                guard arguments.count == 1 else { throw FederationConfigError(line: lineNumber, "listen takes one host:port") }
                guard specs[specs.count - 1].listen == nil else { throw FederationConfigError(line: lineNumber, "listen given twice") }
                specs[specs.count - 1].listen = arguments[0]
            case "gateway":
                guard !arguments.isEmpty else { throw FederationConfigError(line: lineNumber, "gateway takes host:port") }
                specs[specs.count - 1].gateways += arguments
            case "key-file":
                guard arguments.count == 1 else { throw FederationConfigError(line: lineNumber, "key-file takes one path") }
                specs[specs.count - 1].keyFiles.append(arguments[0])
            case "export":
                guard arguments.count == 2 else { throw FederationConfigError(line: lineNumber, "export takes KINDS PATTERN, e.g. `export request,tunnel db`") }
                specs[specs.count - 1].exports.rules.append(try rule(kinds: arguments[0], pattern: arguments[1], line: lineNumber))
            default:
                throw FederationConfigError(line: lineNumber, "unknown keyword \(keyword.debugDescription) (expected federation, listen, gateway, key-file or export)")
            }
        }
        return specs
    }

    /// `KINDS:PATTERN` as `--export` takes it.
    public static func exportFlag(_ text: String) throws(FederationConfigError) -> ExportRule {
        guard let colon = text.firstIndex(of: ":") else {
            throw FederationConfigError(line: nil, "--export must be KINDS:PATTERN, e.g. request,tunnel:db, not \(text.debugDescription)")
        }
        return try rule(kinds: String(text[..<colon]), pattern: String(text[text.index(after: colon)...]), line: nil)
    }

    static func rule(kinds: String, pattern: String, line: Int?) throws(FederationConfigError) -> ExportRule {
        guard let parsed = ExportKinds(parsing: kinds) else {
            throw FederationConfigError(line: line, "unknown export kind in \(kinds.debugDescription) (kinds: request, broadcast, tunnel, subscribe, publish, comma-separated)")
        }
        guard !pattern.isEmpty else { throw FederationConfigError(line: line, "an export pattern must not be empty") }
        guard !pattern.contains("@") else {
            throw FederationConfigError(line: line, "export pattern \(pattern.debugDescription) contains '@': a network exports its own names only")
        }
        return ExportRule(kinds: parsed, pattern: pattern)
    }

    /// Checks that every federation is complete and distinct, and not with the relay's own network.
    public static func validate(_ specs: [FederationSpec], localNetwork: String) throws(FederationConfigError) {
        var seen: Set<String> = []
        for spec in specs {
            let name = spec.network
            guard NetworkName.isValid(name) else {
                throw FederationConfigError(line: nil, "federation \(name.debugDescription): a network name is 1–\(NetworkName.maxLength) bytes of A–Z a–z 0–9 . _ -")
            }
            guard name != localNetwork else { throw FederationConfigError(line: nil, "federation \(name): that is this relay's own network") }
            guard seen.insert(name).inserted else { throw FederationConfigError(line: nil, "federation \(name) is configured twice") }
            guard let listen = spec.listen else {
                throw FederationConfigError(line: nil, "federation \(name): give the address this gateway listens on for \(name)'s gateways (listen HOST:PORT)")
            }
            guard isHostPort(listen) else { throw FederationConfigError(line: nil, "federation \(name): listen must be host:port, not \(listen)") }
            guard !isWildcard(listen) else {
                throw FederationConfigError(
                    line: nil, "federation \(name): listen \(listen) is a wildcard address; give the address \(name)'s gateways dial (it is told to them)")
            }
            guard !spec.gateways.isEmpty else {
                throw FederationConfigError(line: nil, "federation \(name): give at least one of \(name)'s gateways (gateway HOST:PORT)")
            }
            for gateway in spec.gateways where !isHostPort(gateway) {
                throw FederationConfigError(line: nil, "federation \(name): gateway must be host:port, not \(gateway)")
            }
            guard !spec.keyFiles.isEmpty else {
                throw FederationConfigError(line: nil, "federation \(name): give the federation key (key-file PATH; create one with `skein keygen`)")
            }
        }
    }

    static func isWildcard(_ hostPort: String) -> Bool {
        guard let colon = hostPort.lastIndex(of: ":") else { return false }
        let host = hostPort[..<colon]
        return host == "0.0.0.0" || host == "::" || host == "[::]"
    }

    static func isHostPort(_ text: String) -> Bool {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            return false
        }
        return colon != text.startIndex
    }
}
