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
        }
    }
}
