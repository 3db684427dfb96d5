import Foundation
import Testing

/// Issue 17 on real relays: five `skein relay` processes on one LAN of network namespaces (a
/// bridge, a veth each), a publisher on r1 sending 500 events/s and a subscriber on each other
/// relay, faults injected with nftables and signals one after another. The LAN, the clients and
/// the measurements are `Benchmarks/healing/healbench.py` (also the on-demand benchmark, with
/// longer settling); this test runs its short version and holds every run to the targets:
/// no relay held dead under 30 % loss on its host, and within 5 s of each fault's end every
/// relay sees every other alive and every subscriber receives again, with nothing doubled or
/// reordered. Needs root, `ip`, `nft` and `python3` (`make test-deps`, which `make test` runs, installs them).
@Suite("Healing: five relays in network namespaces under loss, partition and restart", .serialized, .timeLimit(.minutes(5)))
struct HealingTests {
    static let bound = 5.0

    struct Run {
        var results: [String: [String: Any]] = [:]
        var output: String
    }

    static func run(scenarios: [String]) throws -> Run {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = root.appendingPathComponent("Benchmarks/healing/healbench.py").path
        let skein = try SkeinBinary.url().path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", script, "--skein", skein, "--scenarios", scenarios.joined(separator: ","), "--settle", "8", "--warmup", "3",
            "--json",
        ]
        // Its table and warnings (stderr) go to a file, so neither pipe can fill and stall it.
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("healbench-\(getpid()).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: log) }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = try FileHandle(forWritingTo: log)
        try process.run()
        let output = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        guard process.terminationStatus == 0 else {
            throw HarnessError("healbench.py failed (status \(process.terminationStatus)):\n\(text)")
        }
        var run = Run(output: text)
        for line in String(decoding: output, as: UTF8.self).split(separator: "\n") {
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let name = object["scenario"] as? String
            else { continue }
            run.results[name] = object
        }
        return run
    }

    /// The common targets of one fault: views and subscribers back within the bound.
    static func checkRecovery(_ result: [String: Any], _ context: String) {
        let deadAfter = result["dead_after_end"] as? Double
        #expect(deadAfter.map { $0 <= bound } == true, "\(context): a live relay was held dead \(deadAfter ?? -1) s after the fault")
        let agreement = result["agreement_after"] as? Double
        #expect(agreement.map { $0 <= bound } == true, "\(context): relays agreed \(agreement.map { "\($0) s" } ?? "never") after the fault")
        let subscribers = result["subscribers"] as? [String: [String: Any]] ?? [:]
        #expect(subscribers.count == 4, "\(context)")
        for (relay, record) in subscribers.sorted(by: { $0.key < $1.key }) {
            let resume = record["resume_after"] as? Double
            #expect(resume.map { $0 <= bound } == true, "\(context): the subscriber on \(relay) resumed \(resume.map { "\($0) s" } ?? "never") after the fault")
            #expect(record["duplicates"] as? Int == 0, "\(context): \(relay) received duplicates")
            #expect(record["out_of_order"] as? Int == 0, "\(context): \(relay) received events out of order")
        }
    }

    @Test func lossOnOneHostAPartitionAndARestartAllHealWithin5s() throws {
        let run = try Self.run(scenarios: ["loss", "partition", "restart"])
        let context = "\n" + run.output
        let loss = try #require(run.results["loss"], "no loss result\(context)")
        // 30 % of r3's packets dropped both ways for 8 s: nobody holds it dead, at any time.
        #expect(loss["held_dead_during"] as? Double == 0, "r3 was held dead under loss\(context)")
        Self.checkRecovery(loss, "loss on r3\(context)")
        let partition = try #require(run.results["partition"], "no partition result\(context)")
        Self.checkRecovery(partition, "r4 cut off for 8 s\(context)")
        let restart = try #require(run.results["restart"], "no restart result\(context)")
        Self.checkRecovery(restart, "r2 killed and restarted\(context)")
    }
}
