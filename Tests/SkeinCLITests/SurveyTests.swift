// skein/2 surveys end to end: three real relay processes on 127.0.0.1, members on two of them in
// three dialects, `skein survey` and the binding on the third.
import Foundation
import Skein
import SkeinCrypto
import Testing

@Suite("Surveys across relays (skein/2)", .timeLimit(.minutes(2)))
struct SurveyCLITests {
    @Test("a survey from a third relay reaches every member on two others, Iris members included, and its counts add up")
    func acrossThreeRelays() async throws {
        try await withScope { scope in
            let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
            let a = try await scope.startMeshRelay("a", keyFile: key)
            let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a])
            let c = try await scope.startMeshRelay("c", keyFile: key, seeds: [a])
            try await waitAllSee([a, b, c], "c", "alive")
            try await waitAllSee([a, b, c], "b", "alive")
            // a: a skein/2 member that names itself and returns the request's headers.
            let modern = try await Skein.serve(cluster: "inv", to: a.endpoint) { request in
                ByteBuffer(string: "a:\(request.headers["k"] ?? "-")")
            }
            // b: an Iris member from the CLI (echo), and a member whose handler faults.
            let iris = try scope.spawn(["serve", "inv", "--echo", "--protocol", "v1.0-draft2"] + b.relayFlag, name: "serve-iris")
            try await iris.waitForStderr("ready")
            let faulty = try await Skein.serve(cluster: "inv", to: b.endpoint) { _ in throw SkeinFault("out of stock") }
            try await c.waitSees("a", serving: "inv")
            try await c.waitSees("b", serving: "inv", members: 2)

            let plain = try await scope.run(["survey", "inv", "hello", "-H", "k=v", "--timeout", "5000"] + c.relayFlag)
            #expect(plain.status == 0, "\(plain.stderr)")
            #expect(plain.stdoutText.split(separator: "\n").map(String.init).sorted() == ["a:v", "hello"])
            #expect(plain.stderr.contains("fault: out of stock"), "\(plain.stderr)")
            #expect(plain.stderr.contains("asked 3, answered 2, faulted 1, lost 0"), "\(plain.stderr)")

            let json = try await scope.run(["survey", "inv", "x", "--json"] + c.relayFlag)
            #expect(json.status == 0, "\(json.stderr)")
            let objects = json.stdoutText.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(objects.count == 4)
            #expect(objects.compactMap { $0["reply"] as? String }.sorted() == ["a:-", "x"])
            #expect(objects.compactMap { $0["fault"] as? String } == ["out of stock"])
            #expect(objects.last?["asked"] as? Int == 3 && objects.last?["lost"] as? Int == 0)

            // The binding on c: the same members, and one that goes away is counted lost.
            let client = try await Skein.connect(to: c.endpoint)
            try await faulty.close()
            try await c.waitSees("b", serving: "inv", members: 1)
            let survey = try await client.survey(cluster: "inv", "y", timeout: .seconds(5))
            var answers: [String] = []
            for try await answer in survey { answers.append(answer.body.map { String(buffer: $0) } ?? "fault") }
            #expect(answers.sorted() == ["a:-", "y"])
            #expect(survey.tally == Survey.Tally(asked: 2, answered: 2, faulted: 0, lost: 0))

            // Another network with no gateway: exit 8, the reason on stderr.
            let far = try await scope.run(["survey", "inv@elsewhere", "x"] + c.relayFlag)
            #expect(far.status == 8 && far.stderr.contains("elsewhere"), "\(far.status) \(far.stderr)")
            try await client.close()
            try await modern.close()
        }
    }
}
