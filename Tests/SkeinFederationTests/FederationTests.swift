import SkeinFederation
import Testing

@Suite("Federation: names")
struct NameTests {
    @Test("name@network splits at the last @ when the suffix is a network name", arguments: [
        ("db@us", "db", "us"),
        ("db", "db", nil),
        ("a@b@us", "a@b", "us"),
        ("db@eu", "db", nil),  // the local network
        ("db@", "db@", nil),
        ("@us", "", "us"),
        ("mail@example com", "mail@example com", nil),  // not a network name: a plain name
        ("x@ünï", "x@ünï", nil),
        ("news.eu@us-east.1_b", "news.eu", "us-east.1_b"),
    ] as [(String, String, String?)])
    func split(_ text: String, _ name: String, _ network: String?) {
        let parsed = FederatedName(text, localNetwork: "eu")
        #expect(parsed.name == name)
        #expect(parsed.network == network)
        #expect(FederatedName.isRemote(text, localNetwork: "eu") == (network != nil))
        if network != nil { #expect(parsed.description == text) }
    }

    @Test("network names: 1–64 bytes of A–Z a–z 0–9 . _ -")
    func validity() {
        #expect(NetworkName.isValid("us"))
        #expect(NetworkName.isValid(String(repeating: "a", count: 64)))
        #expect(!NetworkName.isValid(String(repeating: "a", count: 65)))
        #expect(!NetworkName.isValid(""))
        for bad in ["a b", "a@b", "a+b", "a:b", "ü", "a/b"] { #expect(!NetworkName.isValid(bad), "\(bad)") }
    }

    @Test("both sides of a federation derive the same handshake name")
    func federationName() {
        #expect(NetworkName.federation("us", "eu") == "federation:eu+us")
        #expect(NetworkName.federation("eu", "us") == "federation:eu+us")
    }
}

@Suite("Federation: exports")
struct ExportTests {
    @Test("globs: * matches any run, everything else itself", arguments: [
        ("db", "db", true), ("db", "dbx", false), ("db", "d", false),
        ("news.*", "news.eu", true), ("news.*", "news.", true), ("news.*", "news", false),
        ("*", "", true), ("*", "anything", true), ("*.log", "a.b.log", true), ("*.log", "a.b.lag", false),
        ("a*b*c", "aXXbYYc", true), ("a*b*c", "aXXbYY", false), ("**", "x", true), ("a*a*a*a*b", String(repeating: "a", count: 200), false),
    ] as [(String, String, Bool)])
    func globs(_ pattern: String, _ name: String, _ expected: Bool) {
        #expect(ExportRule(kinds: .request, pattern: pattern).matches(name) == expected)
    }

    @Test("nothing is allowed unless a rule grants that kind for that name")
    func table() {
        let table = ExportTable([
            ExportRule(kinds: [.request, .tunnel], pattern: "db"),
            ExportRule(kinds: .subscribe, pattern: "news.*"),
        ])
        #expect(table.allows(.request, "db"))
        #expect(table.allows(.tunnel, "db"))
        #expect(!table.allows(.broadcast, "db"))
        #expect(table.allows(.subscribe, "news.eu"))
        #expect(!table.allows(.publish, "news.eu"))
        #expect(!table.allows(.request, "cache"))
        #expect(!ExportTable().allows(.request, "db"))
    }

    @Test("kinds parse from comma lists and print back", arguments: ["request", "request,tunnel", "subscribe,publish,broadcast"])
    func kinds(_ text: String) throws {
        let kinds = try #require(ExportKinds(parsing: text))
        #expect(Set(kinds.description.split(separator: ",")) == Set(text.split(separator: ",")))
    }

    @Test("unknown or empty kinds are refused", arguments: ["", "req", "request,", ",request", "all", "Request"])
    func badKinds(_ text: String) {
        #expect(ExportKinds(parsing: text) == nil)
    }
}

@Suite("Federation: configuration")
struct ConfigTests {
    static let file = """
        # eu's side of its federation with us.
        federation us
            listen    10.0.0.1:55560
            gateway   10.0.0.2:55560   # us-1
            gateway   10.0.0.3:55560
            key-file  /etc/skein/eu-us.key
            export request,tunnel  db
            export subscribe       news.*

        federation asia
        listen 10.0.0.1:55561
        gateway 10.9.0.2:55560 10.9.0.3:55560
        key-file a.key
        key-file b.key
        """

    @Test("the documented example parses into its blocks")
    func parses() throws {
        let specs = try FederationConfig.parse(Self.file)
        #expect(specs.count == 2)
        #expect(specs[0] == FederationSpec(
            network: "us", listen: "10.0.0.1:55560", gateways: ["10.0.0.2:55560", "10.0.0.3:55560"],
            keyFiles: ["/etc/skein/eu-us.key"],
            exports: ExportTable([ExportRule(kinds: [.request, .tunnel], pattern: "db"), ExportRule(kinds: .subscribe, pattern: "news.*")])))
        #expect(specs[1].gateways == ["10.9.0.2:55560", "10.9.0.3:55560"])
        #expect(specs[1].keyFiles == ["a.key", "b.key"])
        #expect(specs[1].exports.isEmpty, "nothing is exported by default")
        try FederationConfig.validate(specs, localNetwork: "eu")
    }

    @Test("errors name their line", arguments: [
        ("listen 1.2.3.4:5", 1, "outside a federation block"),
        ("federation us\n  gateway", 2, "gateway takes host:port"),
        ("federation us\n\n  export request", 3, "export takes KINDS PATTERN"),
        ("federation us\n  export fetch db", 2, "unknown export kind"),
        ("federation us\n  export request db@eu", 2, "contains '@'"),
        ("federation us\n  frobnicate 1", 2, "unknown keyword"),
        ("federation us\n  listen a:1\n  listen b:2", 3, "listen given twice"),
        ("federation", 1, "one network name"),
    ] as [(String, Int, String)])
    func lineErrors(_ text: String, _ line: Int, _ fragment: String) {
        do {
            _ = try FederationConfig.parse(text)
            Issue.record("expected an error for \(text.debugDescription)")
        } catch {
            #expect(error.line == line)
            #expect(error.message.contains(fragment), "\(error.message)")
        }
    }

    @Test("incomplete or conflicting federations are refused with what is missing", arguments: [
        (FederationSpec(network: "us", gateways: ["b:1"], keyFiles: ["k"]), "listen HOST:PORT"),
        (FederationSpec(network: "us", listen: "a:1", keyFiles: ["k"]), "gateway HOST:PORT"),
        (FederationSpec(network: "us", listen: "a:1", gateways: ["b:1"]), "key-file PATH"),
        (FederationSpec(network: "eu", listen: "a:1", gateways: ["b:1"], keyFiles: ["k"]), "own network"),
        (FederationSpec(network: "u s", listen: "a:1", gateways: ["b:1"], keyFiles: ["k"]), "network name is"),
        (FederationSpec(network: "us", listen: "a", gateways: ["b:1"], keyFiles: ["k"]), "listen must be host:port"),
        (FederationSpec(network: "us", listen: "a:1", gateways: ["b:99999"], keyFiles: ["k"]), "gateway must be host:port"),
        (FederationSpec(network: "us", listen: "0.0.0.0:7001", gateways: ["b:1"], keyFiles: ["k"]), "wildcard"),
    ] as [(FederationSpec, String)])
    func validation(_ spec: FederationSpec, _ fragment: String) {
        do {
            try FederationConfig.validate([spec], localNetwork: "eu")
            Issue.record("expected \(fragment)")
        } catch {
            #expect(error.description.contains(fragment), "\(error)")
        }
    }

    @Test("a network configured twice is refused")
    func duplicates() {
        let spec = FederationSpec(network: "us", listen: "a:1", gateways: ["b:1"], keyFiles: ["k"])
        #expect(throws: FederationConfigError.self) { try FederationConfig.validate([spec, spec], localNetwork: "eu") }
    }

    @Test("--export KINDS:PATTERN")
    func exportFlag() throws {
        #expect(try FederationConfig.exportFlag("request,tunnel:db") == ExportRule(kinds: [.request, .tunnel], pattern: "db"))
        #expect(try FederationConfig.exportFlag("publish:a:b") == ExportRule(kinds: .publish, pattern: "a:b"))
        #expect(throws: FederationConfigError.self) { try FederationConfig.exportFlag("db") }
        #expect(throws: FederationConfigError.self) { try FederationConfig.exportFlag("request:") }
    }
}
