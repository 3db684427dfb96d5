import NIOCore
import NIOPosix
import Skein
import Testing

@Suite("Handler execution and task executors", .timeLimit(.minutes(1)))
struct ExecutionTests {
    /// A loop of the tests' own, so a test can tell whether code runs on it. Never shut down:
    /// tasks of a connection's executor need their loop until they end.
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    @Test func handlersOnTheEventLoopRunOnTheConnectionsLoop() async throws {
        try await TestRelay.run { relay in
            var options = ConnectionOptions()
            options.handlerExecution = .eventLoop
            let group = Self.group
            options.eventLoopGroup = group
            let loop = group.next()
            _ = try await relay.serve("where", options: options) { request in
                // Reports whether the handler is running on the member connection's loop.
                ByteBuffer(string: loop.inEventLoop ? "loop" : "elsewhere")
            }
            let client = try await relay.connect()
            for _ in 0..<20 {
                let reply = try await client.request(cluster: "where", "?", timeout: .seconds(5))
                #expect(reply.text == "loop")
            }
        }
    }

    @Test func handlersOnTheGlobalExecutorByDefault() async throws {
        try await TestRelay.run { relay in
            let group = Self.group
            var options = ConnectionOptions()
            options.eventLoopGroup = group
            let loop = group.next()
            _ = try await relay.serve("where", options: options) { request in
                ByteBuffer(string: loop.inEventLoop ? "loop" : "elsewhere")
            }
            let client = try await relay.connect()
            let reply = try await client.request(cluster: "where", "?", timeout: .seconds(5))
            #expect(reply.text == "elsewhere")
        }
    }

    @Test func tasksOnTheConnectionsExecutorCallItAndResumeThere() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.serve("echo") { $0.body }
            let group = Self.group
            var options = ConnectionOptions()
            options.eventLoopGroup = group
            let loop = group.next()
            let client = try await relay.connect(options: options)
            let results = try await withThrowingTaskGroup(of: (String, Bool).self) { tasks in
                for i in 0..<50 {
                    tasks.addTask(executorPreference: client.taskExecutor) {
                        let reply = try await client.request(cluster: "echo", "\(i)", timeout: .seconds(5))
                        return (reply.text, loop.inEventLoop)
                    }
                }
                return try await tasks.reduce(into: [(String, Bool)]()) { $0.append($1) }
            }
            let replies = Set(results.map { $0.0 })
            let allOnLoop = results.allSatisfy { $0.1 }
            #expect(replies == Set((0..<50).map { "\($0)" }))
            #expect(allOnLoop, "every task resumed on the connection's event loop")
        }
    }
}
