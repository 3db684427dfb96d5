import Foundation
import NIOCore
import Skein
import Synchronization

/// One subscriber's progress, written by its consuming task, read by the main task.
final class SubscriberState: Sendable {
    let count = Atomic<Int>(0)
    let firstNs = Atomic<Int64>(0)
    let endNs = Atomic<Int64>(0)
    /// The connection ended (or the subscription failed) before this process closed it.
    let lost = Atomic<Bool>(false)
}

/// nbench -mode pubsub -only sub|pub. Readiness is nbench's: the publisher sends empty probe
/// events on the topic until every subscriber has answered on `<subj>.ready`, which proves
/// that the relay routes the topic to each of them before the clock starts.
func runPubSub(_ f: Flags) async throws {
    let only = f.string("only", "")
    switch only {
    case "sub": try await runSubscribers(f)
    case "pub": try await runPublishers(f)
    default: throw BenchError.usage("-only sub or -only pub: each role runs in its own process")
    }
}

private func runSubscribers(_ f: Flags) async throws {
    let urls = try f.endpoints("sub", "127.0.0.1:55555")
    let ns = try f.int("ns", 1)
    let n = try f.int("n", 1_000_000)
    let size = try f.int("size", 1024)
    let subj = f.string("subj", "bench.x")
    let idle = try f.seconds("idle", 3)
    let timeout = try f.seconds("timeout", 60)
    let label = f.string("label", "")

    var connections: [SkeinConnection] = []
    var states: [SubscriberState] = []
    for i in 0..<ns {
        let connection = try await Skein.connect(to: urls[i % urls.count])
        let subscription = try await connection.subscribe(topic: subj)
        let state = SubscriberState()
        let id = ByteBuffer(string: "\(getpid())-\(i)")
        let readyTopic = f.string("ready", subj + ".ready")
        Task {
            var count = 0
            do {
                for try await event in subscription {
                    if event.readableBytes == 0 {  // readiness probe
                        try? await connection.publish(topic: readyTopic, id)
                        continue
                    }
                    count += 1
                    if count == 1 { state.firstNs.store(wallNs(), ordering: .relaxed) }
                    if count == n { state.endNs.store(wallNs(), ordering: .relaxed) }
                    state.count.store(count, ordering: .releasing)
                }
            } catch {
                state.lost.store(true, ordering: .releasing)
            }
        }
        Task {
            let reason = await connection.waitUntilClosed()
            if !reason.isEmpty { state.lost.store(true, ordering: .releasing) }
        }
        connections.append(connection)
        states.append(state)
    }
    say("READY")

    let deadline = monoNs() + Int64(timeout * 1e9)
    var lastSum = -1
    var lastChange = monoNs()
    var lastChangeWall = wallNs()
    var timedOut = false
    while !states.allSatisfy({ $0.endNs.load(ordering: .acquiring) != 0 }) {
        await sleepTask(seconds: 0.1)
        let sum = states.reduce(0) { $0 + $1.count.load(ordering: .acquiring) }
        if sum != lastSum {
            (lastSum, lastChange, lastChangeWall) = (sum, monoNs(), wallNs())
        } else if sum > 0 && Double(monoNs() - lastChange) / 1e9 > idle {
            timedOut = true
            break
        }
        if monoNs() > deadline {
            timedOut = true
            break
        }
        if states.allSatisfy({ $0.lost.load(ordering: .acquiring) }) {
            timedOut = sum < n * ns
            break
        }
    }

    var minStart: Int64 = 0
    var maxEnd: Int64 = 0
    var totalReceived = 0
    var rates: [JSON] = []
    for state in states {
        let count = state.count.load(ordering: .acquiring)
        totalReceived += count
        let start = state.firstNs.load(ordering: .relaxed)
        guard start != 0 else { continue }
        var end = state.endNs.load(ordering: .relaxed)
        if end == 0 { end = lastChangeWall }  // lossy run: time of last progress
        rates.append(.number(Double(count) / (Double(end - start) / 1e9)))
        if minStart == 0 || start < minStart { minStart = start }
        if end > maxEnd { maxEnd = end }
    }
    let lostConnections = states.filter { $0.lost.load(ordering: .acquiring) }.count
    var fields: [(String, JSON)] = [
        ("mode", .string("pubsub")), ("only", .string("sub")), ("ns", .int(Int64(ns))), ("n", .int(Int64(n))),
        ("size", .int(Int64(size))), ("recv_total", .int(Int64(totalReceived))),
        ("expected_total", .int(Int64(n * ns))), ("timed_out", .bool(timedOut)), ("sub_rates", .array(rates)),
    ]
    if maxEnd != 0 {
        fields.append(("agg_sub_rate", .number(Double(totalReceived) / (Double(maxEnd - minStart) / 1e9))))
        fields.append(("sub_first_ns", .int(minStart)))
        fields.append(("sub_last_ns", .int(maxEnd)))
    }
    fields.append(("closed_sub_conns", .int(Int64(lostConnections))))
    emit(fields, label: label)
    for connection in connections { try? await connection.close() }
}

private func runPublishers(_ f: Flags) async throws {
    let urls = try f.endpoints("pub", "127.0.0.1:55555")
    let np = try f.int("np", 1)
    let ns = try f.int("ns", 1)
    let n = try f.int("n", 1_000_000)
    let size = try f.int("size", 1024)
    let subj = f.string("subj", "bench.x")
    let prate = try f.double("prate", 0)
    let label = f.string("label", "")
    let payload = ByteBuffer(repeating: UInt8(ascii: "a"), count: size)

    var connections: [SkeinConnection] = []
    var flushSubscriptions: [(topic: String, subscription: Subscription)] = []
    for i in 0..<np {
        let connection = try await Skein.connect(to: urls[i % urls.count])
        // The relay handles one connection's frames in order, so an event this connection
        // publishes to itself after its data comes back only once the relay has taken all of
        // the data: the equivalent of nats.go's Flush() (a PING/PONG round trip).
        // This network's topic even when `subj` is another network's (`name@network`).
        let local = subj.lastIndex(of: "@").map { String(subj[..<$0]) } ?? subj
        let topic = "\(local).flush.\(getpid()).\(i)"
        flushSubscriptions.append((topic, try await connection.subscribe(topic: topic)))
        connections.append(connection)
    }

    // `-ready` names the readiness topic where the two sides spell it differently (across a
    // federation the publisher says `t.ready@us`, the subscriber `t.ready`).
    let readySubscription = try await connections[0].subscribe(topic: f.string("ready", subj + ".ready"))
    let readyIDs = Mutex<Set<String>>([])
    let readyTask = Task {
        for try await answer in readySubscription {
            let id = String(buffer: answer)
            readyIDs.withLock { _ = $0.insert(id) }
        }
    }
    let readyDeadline = monoNs() + 15_000_000_000
    while true {
        for connection in connections { try await connection.publish(topic: subj, ByteBuffer()) }
        await sleepTask(seconds: 0.02)
        if readyIDs.withLock({ $0.count }) >= ns { break }
        if monoNs() > readyDeadline {
            complain("subscribers not ready")
            exit(3)
        }
    }
    await sleepTask(seconds: 0.1)  // let the probes' tail drain
    readySubscription.unsubscribe()
    _ = try? await readyTask.value

    let per = n / np
    let pubStart = wallNs()
    let t0 = monoNs()
    try await withThrowingTaskGroup(of: Void.self) { group in
        for i in 0..<np {
            let connection = connections[i]
            let flush = flushSubscriptions[i]
            let count = per + (i == 0 ? n - per * np : 0)
            let rate = prate / Double(np)
            group.addTask {
                if prate <= 0 {
                    for _ in 0..<count { try await connection.publish(topic: subj, payload) }
                } else {
                    // paced: every 1 ms publish what is due (this publisher's share of the rate)
                    let start = monoNs()
                    var sentCount = 0
                    while sentCount < count {
                        let due = min(count, Int(rate * Double(monoNs() - start) / 1e9))
                        while sentCount < due {
                            try await connection.publish(topic: subj, payload)
                            sentCount += 1
                        }
                        await sleepTask(seconds: 0.001)
                    }
                }
                var marker = flush.subscription.makeAsyncIterator()
                try await connection.publish(topic: flush.topic, ByteBuffer(string: "flush"))
                guard try await marker.next() != nil else { throw BenchError.failed("flush marker never came back") }
            }
        }
        try await group.waitForAll()
    }
    let elapsed = Double(monoNs() - t0) / 1e9
    let pubEnd = pubStart + (monoNs() - t0)
    emit(
        [
            ("mode", .string("pubsub")), ("only", .string("pub")), ("np", .int(Int64(np))), ("ns", .int(Int64(ns))),
            ("n", .int(Int64(n))), ("size", .int(Int64(size))), ("pub_rate", .number(Double(n) / elapsed)),
            ("pub_start_ns", .int(pubStart)), ("pub_end_ns", .int(pubEnd)),
        ], label: label)
    for connection in connections { try? await connection.close() }
}
