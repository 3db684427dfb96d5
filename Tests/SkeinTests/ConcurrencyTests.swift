import NIOCore
import Skein
import Testing

@Suite("Concurrency", .timeLimit(.minutes(1)))
struct ConcurrencyTests {
    /// 25 clients, each with 25 concurrent callers making 25 requests, against 25 members.
    @Test func manyClientsManyMembersManyRequests() async throws {
        let clients = 25
        let members = 25
        let callersPerClient = 25
        let requestsPerCaller = 25
        try await TestRelay.run { relay in
            let served = (0..<members).map { _ in Shared(0) }
            for (index, count) in served.enumerated() {
                _ = try await relay.serve("work") { request in
                    count.update { $0 += 1 }
                    return ByteBuffer(string: "m\(index) " + request.body.text)
                }
            }
            var connections: [SkeinConnection] = []
            for _ in 0..<clients { connections.append(try await relay.connect()) }
            let callers = connections

            let answered = try await within(.seconds(60), "every request") {
                try await withThrowingTaskGroup(of: Int.self) { group in
                    for (c, connection) in callers.enumerated() {
                        for caller in 0..<callersPerClient {
                            group.addTask {
                                var ok = 0
                                for r in 0..<requestsPerCaller {
                                    let body = "c\(c).\(caller).\(r)"
                                    let reply = try await connection.request(cluster: "work", body, timeout: .seconds(30)).text
                                    let parts = reply.split(separator: " ")
                                    if parts.count == 2, parts[0].hasPrefix("m"), parts[1] == body { ok += 1 }
                                }
                                return ok
                            }
                        }
                    }
                    return try await group.reduce(0, +)
                }
            }
            let total = clients * callersPerClient * requestsPerCaller
            #expect(answered == total, "every reply matches its request")
            let counts = served.map(\.value)
            #expect(counts.reduce(0, +) == total, "each request was handled exactly once")
            #expect(counts.allSatisfy { $0 > 0 }, "every member got some of the load: \(counts)")
        }
    }

    @Test func handlerConcurrencyIsBounded() async throws {
        try await TestRelay.run { relay in
            let limit = 4
            let running = Shared((now: 0, max: 0))
            var options = ConnectionOptions()
            options.maxConcurrentHandlers = limit
            _ = try await relay.serve("bounded", options: options) { request in
                running.update { state in
                    state.now += 1
                    state.max = Swift.max(state.max, state.now)
                }
                try? await Task.sleep(for: .milliseconds(10))
                running.update { $0.now -= 1 }
                return request.body
            }
            let client = try await relay.connect()
            let requests = 60
            let replies = try await within(.seconds(30), "the bounded member's replies") {
                try await withThrowingTaskGroup(of: Bool.self) { group in
                    for i in 0..<requests {
                        group.addTask { try await client.request(cluster: "bounded", "\(i)", timeout: .seconds(20)).text == "\(i)" }
                    }
                    return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
                }
            }
            #expect(replies == requests)
            #expect(running.value.max <= limit, "at most \(limit) handlers ran at once, saw \(running.value.max)")
            #expect(running.value.max == limit, "handlers did run in parallel up to the limit")
        }
    }
}
