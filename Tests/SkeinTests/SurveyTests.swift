import NIOCore
import Skein
import Testing
import SkeinTestSupport

/// Surveys through the binding, against an in-process relay (Docs/skein-2.md, "Surveys").
@Suite("Surveys (skein/2)", .timeLimit(.minutes(1)))
struct SurveyTests {
    @Test func everyMemberAnswersInItsOwnDialectAndTheTallyAddsUp() async throws {
        try await TestRelay.run { relay in
            var iris = ConnectionOptions()
            iris.protocolVersion = .irisDraft2
            var skein1 = ConnectionOptions()
            skein1.protocolVersion = .skein1
            _ = try await relay.serve("inv", options: iris) { _ in ByteBuffer(string: "iris") }
            _ = try await relay.serve("inv", options: skein1) { _ in throw SkeinFault("out of stock") }
            let seen = Shared<Headers?>(nil)
            _ = try await relay.serve("inv") { request in
                seen.update { $0 = request.headers }
                return ByteBuffer(string: "modern")
            }
            let client = try await relay.connect()
            let survey = try await client.survey(cluster: "inv", "count", headers: ["k": "v"], timeout: .seconds(5))
            var replies: [String] = []
            var faults: [String] = []
            for try await answer in survey {
                switch answer {
                case .reply(let message): replies.append(String(buffer: message.body))
                case .fault(let fault): faults.append(fault)
                }
            }
            #expect(replies.sorted() == ["iris", "modern"])
            #expect(faults == ["out of stock"])
            #expect(survey.tally == Survey.Tally(asked: 3, answered: 2, faulted: 1, lost: 0))
            #expect(seen.value?["k"] == "v")
        }
    }

    @Test func aMemberThatDoesNotAnswerInTimeIsLostAndNobodyMeansZerosAtOnce() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.serve("slow") { request in
                try await Task.sleep(for: .seconds(30))
                return request.body
            }
            _ = try await relay.serve("slow") { $0.body }
            let client = try await relay.connect()
            let survey = try await client.survey(cluster: "slow", "x", timeout: .seconds(2))
            var answers = 0
            for try await _ in survey { answers += 1 }
            #expect(answers == 1)
            #expect(survey.tally == Survey.Tally(asked: 2, answered: 1, faulted: 0, lost: 1))
            let empty = try await client.survey(cluster: "nobody", "x", timeout: .seconds(5))
            for try await _ in empty { Issue.record("an answer from nobody") }
            #expect(empty.tally == Survey.Tally(asked: 0, answered: 0, faulted: 0, lost: 0))
        }
    }

    @Test func anOlderConnectionCannotSurveyAndAnotherNetworkUnreachableThrows() async throws {
        try await TestRelay.run { relay in
            var skein1 = ConnectionOptions()
            skein1.protocolVersion = .skein1
            let old = try await relay.connect(options: skein1)
            let refused = await error { _ = try await old.survey(cluster: "inv", "x", timeout: .seconds(1)) }
            #expect((refused as? SkeinError)?.code == .unsupported, "\(String(describing: refused))")
            let client = try await relay.connect()
            let survey = try await client.survey(cluster: "db@elsewhere", "x", timeout: .seconds(1))
            let failure = await error { for try await _ in survey {} }
            #expect((failure as? SkeinError)?.code == .networkUnreachable, "\(String(describing: failure))")
            // The connection is still good.
            _ = try await relay.serve("inv") { $0.body }
            let again = try await client.survey(cluster: "inv", "y", timeout: .seconds(5))
            var bodies: [String] = []
            for try await answer in again { bodies.append(answer.body.map { String(buffer: $0) } ?? "") }
            #expect(bodies == ["y"] && again.tally?.answered == 1)
        }
    }
}
