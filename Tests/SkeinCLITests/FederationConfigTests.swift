import Foundation
import Testing

/// `skein relay`'s federation configuration, from files and flags, on 127.0.0.1
/// (Docs/federation.md §3). The namespace tests (FederationTests) cover the network behaviour.
@Suite("Federation configuration", .timeLimit(.minutes(2)))
struct FederationConfigTests {
    @Test("a federation file with an error: the relay refuses to start, naming the file and line (exit 78)")
    func fileErrorNamesItsLine() async throws {
        try await withScope { scope in
            let file = scope.path("federation.conf")
            try "# eu's gateway\nfederation us\n  listen 127.0.0.1:7001\n  export fetch db\n".write(to: file, atomically: true, encoding: .utf8)
            let result = try await scope.run(["relay", "--dev", "--client-port", "0", "--no-admin", "--federation-config", file.path])
            #expect(result.status == 78, "\(result.stderr)")
            #expect(result.stderr.contains("federation.conf: line 4: unknown export kind"), "\(result.stderr)")
        }
    }

    @Test("an incomplete federation, or a key file that cannot be used, is refused with what is wrong (exit 78)")
    func incomplete() async throws {
        try await withScope { scope in
            let missing = scope.path("missing.conf")
            try "federation us\n  listen 127.0.0.1:7001\n  key-file /nonexistent/fed.key\n".write(to: missing, atomically: true, encoding: .utf8)
            let noGateway = try await scope.run(["relay", "--dev", "--client-port", "0", "--no-admin", "--federation-config", missing.path])
            #expect(noGateway.status == 78)
            #expect(noGateway.stderr.contains("give at least one of us's gateways"), "\(noGateway.stderr)")
            try "federation us\n  listen 127.0.0.1:7001\n  gateway 127.0.0.1:7002\n  key-file /nonexistent/fed.key\n".write(
                to: missing, atomically: true, encoding: .utf8)
            let noKey = try await scope.run(["relay", "--dev", "--client-port", "0", "--no-admin", "--federation-config", missing.path])
            #expect(noKey.status == 78)
            #expect(noKey.stderr.contains("federation us:") && noKey.stderr.contains("/nonexistent/fed.key"), "\(noKey.stderr)")
        }
    }

    @Test("federation flags without --federation, a bad --export, or a bad --network are usage errors (exit 64)", arguments: [
        ["--export", "request:db"],
        ["--federation", "us", "--export", "db"],
        ["--federation", "us", "--federation-listen", "0.0.0.0:7001", "--federation-gateway", "127.0.0.1:7002", "--federation-key-file", "k"],
        ["--network", "not a name"],
    ])
    func usageErrors(_ flags: [String]) async throws {
        try await withScope { scope in
            let result = try await scope.run(["relay", "--dev", "--client-port", "0", "--no-admin"] + flags)
            #expect(result.status == 64, "\(flags): \(result.stderr)")
        }
    }

    @Test("two single-relay networks federated by files: a request crosses, status shows the link and both sides' exports")
    func filesFederate() async throws {
        try await withScope { scope in
            let fedKey = scope.path("fed.key").path
            #expect(try await scope.run(["keygen", "-o", fedKey]).status == 0)
            let (euListen, usListen) = ("127.0.0.1:\(try unusedPort())", "127.0.0.1:\(try unusedPort())")
            let euFile = scope.path("eu.conf")
            try "federation us\n  listen \(euListen)\n  gateway \(usListen)\n  key-file \(fedKey)\n".write(to: euFile, atomically: true, encoding: .utf8)
            let usFile = scope.path("us.conf")
            try "federation eu\n  listen \(usListen)\n  gateway \(euListen)\n  key-file \(fedKey)\n  export request db   # only requests, only db\n"
                .write(to: usFile, atomically: true, encoding: .utf8)
            let eu = try await scope.startRelay(["--network", "eu", "--federation-config", euFile.path])
            let us = try await scope.startRelay(["--network", "us", "--federation-config", usFile.path])
            _ = try await scope.serve(["db", "--echo"], relay: us)
            // The link comes up within a few redials; then the request crosses.
            var answer = Outcome(status: -1, stdout: Data(), stderr: "")
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                answer = try await scope.run(["request", "db@us", "across"] + eu.flag)
                if answer.status == 0 { break }
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(answer.status == 0 && answer.stdoutText == "across", "\(answer.stderr)")
            let refused = try await scope.run(["request", "cache@us", "x"] + eu.flag)
            #expect(refused.status == 9, "not exported: \(refused.stderr)")
            let status = try await scope.run(["status", "--json", "--admin", "127.0.0.1:\(eu.adminPort!)"])
            let object = try JSONSerialization.jsonObject(with: status.stdout) as? [String: Any]
            let federation = (object?["federation"] as? [[String: Any]])?.first
            #expect(federation?["network"] as? String == "us")
            #expect(federation?["reachable"] as? Bool == true)
            #expect(federation?["theyExport"] as? [String] == ["request db"])
            #expect(federation?["weExport"] as? [String] == [])
            #expect((federation?["links"] as? [[String: Any]])?.count == 1)

            // The same for people: a section per federation, and its gateway links as a table.
            let text = try await scope.run(["status", "--admin", "127.0.0.1:\(eu.adminPort!)"])
            #expect(text.status == 0, "\(text.stderr)")
            let output = lines(text.stdoutText)
            #expect(output.contains("Federation with us"), "\(text.stdoutText)")
            #expect(output.contains { cells($0) == ["reachable", "yes"] }, "\(text.stdoutText)")
            #expect(output.contains { cells($0) == ["they export", "request db"] }, "\(text.stdoutText)")
            #expect(output.contains { cells($0) == ["we export", "nothing"] }, "\(text.stdoutText)")
            #expect(output.contains { cells($0) == ["listen", euListen] }, "\(text.stdoutText)")
            let linkHeader = try #require(output.firstIndex { cells($0).first == "GATEWAY" }, "\(text.stdoutText)")
            #expect(cells(output[linkHeader]).contains("DESIGNATED"))
            let link = cells(output[linkHeader + 1])
            #expect(link.dropFirst().first == usListen, "\(text.stdoutText)")
        }
    }
}
