// `skein simulate mesh` as a user runs it: the report, its determinism, and refused flags.

import Foundation
import Testing

@Suite("simulate mesh", .timeLimit(.minutes(1)))
struct SimulateMeshTests {
    @Test("one seed prints one report, byte for byte, and exits 0 when every invariant held")
    func deterministicReport() async throws {
        try await withScope { scope in
            let arguments = ["simulate", "mesh", "--relays", "4", "--seed", "9", "--faults", "2", "--seconds", "3", "--json"]
            let first = try await scope.run(arguments, within: .seconds(30))
            let second = try await scope.run(arguments, within: .seconds(30))
            #expect(first.status == 0, "\(first.stderr)")
            #expect(first.stdout == second.stdout)
            let report = try JSONSerialization.jsonObject(with: first.stdout) as? [String: Any]
            #expect(report?["violation"] is NSNull)
            #expect((report?["requests"] as? Int ?? 0) > 100)
            #expect(first.stderr.contains("wall time"))
        }
    }

    @Test("flags of the other kind of scenario are refused, naming them (exit 64)")
    func refusedFlags() async throws {
        try await withScope { scope in
            let mesh = try await scope.run(["simulate", "mesh", "--members", "30"])
            #expect(mesh.status == 64 && mesh.stderr.contains("--members"))
            let membership = try await scope.run(["simulate", "crash", "--relays", "9"])
            #expect(membership.status == 64 && membership.stderr.contains("--relays"))
            let bad = try await scope.run(["simulate", "mesh", "--relays", "0"])
            #expect(bad.status == 64 && bad.stderr.contains("--relays"))
            let networks = try await scope.run(["simulate", "mesh", "--networks", "3"])
            #expect(networks.status == 64 && networks.stderr.contains("--networks must be 1 or 2"))
            let small = try await scope.run(["simulate", "mesh", "--networks", "2", "--relays", "3"])
            #expect(small.status == 64 && small.stderr.contains("at least 4 relays"))
        }
    }

    @Test("two federated networks: the report says what crossed and what was refused")
    func federated() async throws {
        try await withScope { scope in
            let run = try await scope.run(["simulate", "mesh", "--relays", "4", "--networks", "2", "--seconds", "3"])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.stdoutText.contains("4 relays in 2 federated networks"))
            #expect(run.stdoutText.contains("from the other network") && run.stdoutText.contains("every invariant held"))
        }
    }
}
