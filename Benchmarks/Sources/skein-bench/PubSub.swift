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
    // `-pattern P`: one skein/2 pattern subscription instead of the topic(s); `-alt-subj T`: a
    // second topic the publisher alternates with (both subscribed, one count).
    let pattern = f.string("pattern", "")
    let alt = f.string("alt-subj", "")

    var connections: [SkeinConnection] = []
    var states: [SubscriberState] = []
    for i in 0..<ns {
        let connection = try await Skein.connect(to: urls[i % urls.count])
        var subscriptions = [try await connection.subscribe(topic: pattern.isEmpty ? subj : pattern)]
        if pattern.isEmpty, !alt.isEmpty { subscriptions.append(try await connection.subscribe(topic: alt)) }
        let state = SubscriberState()
        let id = ByteBuffer(string: "\(getpid())-\(i)")
        let readyTopic = f.string("ready", subj + ".ready")
        for subscription in subscriptions {
            Task {
                do {
                    for try await event in subscription {
                        if event.readableBytes == 0 {  // readiness probe
                            try? await connection.publish(topic: readyTopic, id)
                            continue
                        }
                        let count = state.count.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue
                        if count == 1 { state.firstNs.store(wallNs(), ordering: .relaxed) }
                        if count == n { state.endNs.store(wallNs(), ordering: .relaxed) }
                    }
                } catch {
                    state.lost.store(true, ordering: .releasing)
                }
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
    // `-alt-subj T`: every other event goes to T (so no relay's last-route cache holds). `-headers K`:
    // each event carries K headers of a W3C traceparent's size (skein/2).
    let alt = f.string("alt-subj", "")
    let headerCount = try f.int("headers", 0)
    var built = Headers()
    for i in 0..<headerCount { built.add(i == 0 ? "traceparent" : "h\(i)", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") }
    let headers = built

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
                if prate <= 0, !alt.isEmpty || !headers.isEmpty {
                    for k in 0..<count {
                        let topic = alt.isEmpty || k & 1 == 0 ? subj : alt
                        if headers.isEmpty {
                            try await connection.publish(topic: topic, payload)
                        } else {
                            try await connection.publish(topic: topic, payload, headers: headers)
                        }
                    }
                } else if prate <= 0 {
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

/// -mode subs: one connection holding `-literals N` topic subscriptions and `-patterns M`
/// pattern subscriptions (skein/2), none of which match `bench.*` topics with one token after
/// `bench` (a third of the patterns share the `bench` prefix, a third start with `*`): the
/// load a publish's lookup must not feel. READY once the relay has them all; holds until killed.
func runSubscriptionHolder(_ f: Flags) async throws {
    let url = try f.endpoints("sub", "127.0.0.1:55555")[0]
    let literals = try f.int("literals", 9000)
    let patterns = try f.int("patterns", 1000)
    let life = try f.seconds("life", 1800)
    let connection = try await Skein.connect(to: url)
    var held: [Subscription] = []
    held.reserveCapacity(literals + patterns)
    for i in 0..<literals { held.append(try await connection.subscribe(topic: "idle.\(i % 100).t\(i)")) }
    for i in 0..<patterns {
        let pattern: String
        switch i % 3 {
        case 0: pattern = "bench.p\(i).>"
        case 1: pattern = "*.n\(i)"
        default: pattern = "idle.\(i % 100).*.q\(i)"
        }
        held.append(try await connection.subscribe(topic: pattern))
    }
    // The relay takes one connection's frames in order: an event on a topic subscribed last,
    // back here, means it holds every subscription before it.
    let marker = "idle.marker.\(getpid())"
    let check = try await connection.subscribe(topic: marker)
    var iterator = check.makeAsyncIterator()
    try await connection.publish(topic: marker, "ready")
    guard try await iterator.next() != nil else { throw BenchError.failed("marker never came back") }
    say("READY")
    await sleepTask(seconds: life)
    withExtendedLifetime(held) {}
}
