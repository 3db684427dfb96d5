import InMemoryTracing
import NIOCore
import Skein
import Testing
import Tracing
import SkeinTestSupport

/// The process's one instrument: an in-memory tracer (InstrumentationSystem is bootstrapped
/// once per process). Tests outside a span are unaffected: nothing is injected without one.
enum TestTracing {
    static let tracer: InMemoryTracer = {
        let tracer = InMemoryTracer()
        InstrumentationSystem.bootstrap(tracer)
        return tracer
    }()
}

/// `skein/2` headers through the binding, against an in-process relay (Docs/skein-2.md).
@Suite("Headers (skein/2)", .timeLimit(.minutes(1)))
struct HeadersTests {
    struct Echo: ClusterHandler {
        let seen: Shared<[Headers]>
        func respond(to request: ServiceRequest) async throws -> Message {
            seen.update { $0.append(request.headers) }
            if request.headers["bad"] != nil { return Message(request.body, headers: ["": "empty key"]) }
            return Message(request.body, headers: ["answered-by": "echo"])
        }
        func handleBroadcast(_ message: ByteBuffer, headers: Headers) async {
            seen.update { $0.append(headers) }
        }
    }

    @Test func requestsRepliesBroadcastsAndEventsCarryTheirHeaders() async throws {
        try await TestRelay.run { relay in
            let seen = Shared<[Headers]>([])
            _ = try await relay.serve("echo", handler: Echo(seen: seen))
            let client = try await relay.connect()
            let reply = try await client.request(cluster: "echo", "hi", headers: ["k": "v", "k2": "w"], timeout: .seconds(5))
            #expect(String(buffer: reply.body) == "hi" && reply.headers["answered-by"] == "echo")
            #expect(seen.value.first?["k"] == "v" && seen.value.first?["k2"] == "w")
            // A reply whose headers the relay could not carry reaches the caller as a fault.
            let outcome = await error { try await client.request(cluster: "echo", "x", headers: ["bad": "1"], timeout: .seconds(5)) }
            #expect((outcome as? SkeinError)?.code == .remoteFault, "\(String(describing: outcome))")
            try await client.broadcast(cluster: "echo", ByteBuffer(string: "b"), headers: ["cast": "1"])
            #expect(await eventually("the broadcast's headers") { seen.value.contains { $0["cast"] == "1" } })

            let subscription = try await client.subscribe(topic: "t")
            try await client.barrier()
            try await client.publish(topic: "t", "e", headers: ["a": "1", "a": "2"])
            var events = subscription.events.makeAsyncIterator()
            let event = try await events.next()
            #expect(event?.headers.values(for: "a") == ["1", "2"] && event.map { String(buffer: $0.body) } == "e")
        }
    }

    @Test func headersTheRelayWouldRefuseFailTheCallAloneAndIrisSubscribersGetTheBody() async throws {
        try await TestRelay.run { relay in
            var iris = ConnectionOptions()
            iris.protocolVersion = .irisDraft2
            let old = try await relay.connect(options: iris)
            let subscription = try await old.subscribe(topic: "t")
            try await old.barrier()
            let client = try await relay.connect()
            let empty = await error { try await client.publish(topic: "t", "x", headers: ["": "v"]) }
            #expect((empty as? SkeinError)?.code == .invalidName)
            let many = Headers((0..<65).map { (key: "k\($0)", value: "") })
            let tooMany = await error { try await client.publish(topic: "t", "x", headers: many) }
            #expect((tooMany as? SkeinError)?.code == .invalidName)
            let big = await error { try await client.publish(topic: "t", "x", headers: ["k": String(repeating: "v", count: 20_000)]) }
            #expect((big as? SkeinError)?.code == .messageTooLarge)
            // The connection is still good; the Iris subscriber gets the body without headers.
            try await client.publish(topic: "t", "kept", headers: ["k": "v"])
            var iterator = subscription.makeAsyncIterator()
            #expect(try await iterator.next().map { String(buffer: $0) } == "kept")
        }
    }

    @Test func aRequestMadeInsideASpanContinuesInTheMembersHandler() async throws {
        let tracer = TestTracing.tracer
        try await TestRelay.run { relay in
            let inHandler = Shared<[String]>([])
            _ = try await relay.serve("traced", request: { request in
                // The handler's own span is a child of the caller's.
                withSpan("handle") { span in
                    inHandler.update { $0.append(span.context.inMemorySpanContext?.traceID ?? "none") }
                }
                return request.body
            })
            let client = try await relay.connect()
            let callerTrace = try await withSpan("call") { span in
                _ = try await client.request(cluster: "traced", ByteBuffer(string: "q"), timeout: .seconds(5))
                return span.context.inMemorySpanContext?.traceID ?? "missing"
            }
            #expect(callerTrace != "missing")
            #expect(inHandler.value == [callerTrace], "the member's span continues the caller's trace")
            // Outside a span nothing is injected: the member sees no headers.
            let plain = Shared<Headers?>(nil)
            _ = try await relay.serve("plain", request: { request in
                plain.update { $0 = request.headers }
                return request.body
            })
            _ = try await client.request(cluster: "plain", ByteBuffer(string: "q"), timeout: .seconds(5))
            #expect(plain.value?.isEmpty == true)
            _ = tracer
        }
    }
}
