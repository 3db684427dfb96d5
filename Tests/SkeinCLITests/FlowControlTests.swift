// Flow control across relays (Docs/mesh.md, "Flow control"): real relay processes on 127.0.0.1,
// a publisher on one and deliberately slow subscribers on the other, through the binding.
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Skein
import SkeinCrypto
import Testing

/// Reads `topic` at a set pace and records the sequence numbers it got.
final class PacedSubscriber: Sendable {
    private let state = NIOLockedValueBox((received: [UInt64](), ended: String?.none))
    let connection: SkeinConnection
    private let task: Task<Void, Never>

    /// Sleeps `pause` after every `batch` events; a `batch` of 0 never reads at all.
    init(topic: String, on relay: MeshRelay, batch: Int, pause: Duration) async throws {
        // A small receive buffer, so the binding stops reading soon after its reader does.
        var options = ConnectionOptions()
        options.receiveBuffer = 16
        let connection = try await Skein.connect(to: relay.endpoint, options: options)
        let subscription = try await connection.subscribe(topic: topic)
        let state = self.state
        self.connection = connection
        task = Task {
            do {
                if batch == 0 {
                    try await Task.sleep(for: .seconds(3600))
                    return
                }
                var count = 0
                for try await event in subscription {
                    let sequence = event.getInteger(at: event.readerIndex, as: UInt64.self) ?? .max
                    state.withLockedValue { $0.received.append(sequence) }
                    count += 1
                    if count % batch == 0 { try await Task.sleep(for: pause) }
                }
                state.withLockedValue { $0.ended = "ended" }
            } catch {
                state.withLockedValue { $0.ended = "\(error)" }
            }
        }
    }

    var received: [UInt64] { state.withLockedValue { $0.received } }
    var count: Int { state.withLockedValue { $0.received.count } }
    var ended: String? { state.withLockedValue { $0.ended } }

    func stop() async {
        task.cancel()
        try? await connection.close()
    }
}

/// Publishes `count` events of `size` bytes to `topic`, numbered from 0, as fast as the relay
/// takes them.
func flood(_ connection: SkeinConnection, topic: String, count: Int, size: Int) async throws {
    var event = ByteBuffer(repeating: 0x5a, count: size)
    for sequence in 0..<UInt64(count) {
        event.setInteger(sequence, at: 0)
        try await connection.publish(topic: topic, event)
    }
}

@Suite("Flow control: slow subscribers on another relay", .serialized, .timeLimit(.minutes(3)))
struct FlowControlTests {
    func twoRelays(_ scope: Scope, extraB: [String] = []) async throws -> (a: MeshRelay, b: MeshRelay) {
        let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
        let a = try await scope.startMeshRelay("a", keyFile: key)
        let b = try await scope.startMeshRelay("b", keyFile: key, seeds: [a], extra: extraB)
        try await waitAllSee([a, b], "b", "alive")
        return (a, b)
    }

    @Test("a slow subscriber on B slows a publisher on A to its pace: every event arrives, in order; another topic keeps its speed")
    func slowSubscriberElsewhere() async throws {
        try await withScope { scope in
            // 128 MiB of events against a 32 MiB limit: without holds, B would close the subscriber.
            let (a, b) = try await twoRelays(scope, extraB: ["--slow-consumer-bytes", "\(32 << 20)"])
            let slow = try await PacedSubscriber(topic: "flood", on: b, batch: 8, pause: .milliseconds(5))
            let fast = try await PacedSubscriber(topic: "quick", on: b, batch: 1_000_000, pause: .zero)
            try await a.waitSees("b", subscribedTo: "flood")
            try await a.waitSees("b", subscribedTo: "quick")
            let publisher = try await Skein.connect(to: a.endpoint)
            let bystander = try await Skein.connect(to: a.endpoint)
            let total = 8192
            let started = ContinuousClock.now
            let flooding = Task { try await flood(publisher, topic: "flood", count: total, size: 16 << 10) }
            // Once the subscriber is behind, another topic's publisher still gets through at once.
            try await waitFor("the slow subscriber to be behind", within: .seconds(20)) { slow.count >= 256 }
            let quickStart = ContinuousClock.now
            try await flood(bystander, topic: "quick", count: 500, size: 64)
            try await waitFor("every quick event", within: .seconds(5)) { fast.count == 500 }
            let quickTook = ContinuousClock.now - quickStart
            try await flooding.value
            let publisherTook = ContinuousClock.now - started
            // The publisher was held to the subscriber's pace: when it finished, the subscriber
            // was at most what the buffers on the way hold behind (Docs/mesh.md: the publisher's
            // binding and socket, relay A's link buffer, the sockets between the relays, relay B's
            // send buffer and what was on the way when it held A, B's socket to the subscriber;
            // 45 MiB on a quiet machine, 85 MiB during the parallel CLI pass), never the whole
            // flood: without holds it was 7,800 of 8,192 events ahead.
            let behind = total - slow.count
            #expect(behind < (96 << 20) / (16 << 10), "the publisher ran \(behind) events ahead")
            try await waitFor("every flood event", within: .seconds(30)) { slow.count == total }
            #expect(slow.received == (0..<UInt64(total)).map { $0 }, "lost or out of order")
            #expect(fast.received == (0..<UInt64(500)).map { $0 })
            #expect(slow.ended == nil && fast.ended == nil)
            #expect(quickTook < publisherTook / 2, "the other topic took \(quickTook), the flood \(publisherTook)")
            #expect(!b.child.stderr.contains("closing slow consumer"), "\(b.child.stderr)")
            await slow.stop()
            await fast.stop()
            try await publisher.close()
            try await bystander.close()
        }
    }

    @Test("a subscriber on B that stops reading is closed after the timeout; its publisher on A goes on, and the other subscriber gets everything")
    func stalledSubscriberElsewhere() async throws {
        try await withScope { scope in
            let (a, b) = try await twoRelays(scope, extraB: ["--slow-consumer-timeout", "1000"])
            let stalled = try await PacedSubscriber(topic: "feed", on: b, batch: 0, pause: .zero)
            let reader = try await PacedSubscriber(topic: "feed", on: b, batch: 1_000_000, pause: .zero)
            try await a.waitSees("b", subscribedTo: "feed")
            let publisher = try await Skein.connect(to: a.endpoint)
            let total = 2048
            try await flood(publisher, topic: "feed", count: total, size: 16 << 10)
            try await waitFor("every event at the reading subscriber", within: .seconds(30)) { reader.count == total }
            #expect(reader.received == (0..<UInt64(total)).map { $0 })
            try await waitFor("B to close the stalled subscriber", within: .seconds(10)) {
                b.child.stderr.components(separatedBy: "closing slow consumer").count == 2
            }
            #expect(reader.ended == nil)
            await stalled.stop()
            await reader.stop()
            try await publisher.close()
        }
    }
}
