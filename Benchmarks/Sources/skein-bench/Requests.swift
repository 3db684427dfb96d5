import Foundation
import NIOCore
import Skein
import Synchronization

// MARK: - Responders

/// nbench -mode resp: -ns members of cluster -subj, each on its own connection, echoing every
/// request body. Prints READY and lives until killed (or -life).
func runResponders(_ f: Flags) async throws {
    let urls = try f.endpoints("sub", "127.0.0.1:55555")
    let ns = try f.int("ns", 3)
    let subj = f.string("subj", "svc")
    let life = try f.seconds("life", 1800)
    var options = ConnectionOptions()
    // Handlers on the connection's event loop (ConnectionOptions.handlerExecution), the
    // binding's low-latency setting for handlers that do not block; -exec global for the default.
    options.handlerExecution = f.string("exec", "loop") == "loop" ? .eventLoop : .globalExecutor
    var members: [SkeinConnection] = []
    for i in 0..<ns {
        members.append(try await Skein.serve(cluster: subj, to: urls[i % urls.count], options: options, request: { $0.body }))
    }
    say("READY")
    await sleepTask(seconds: life)
    withExtendedLifetime(members) {}
}

/// Proves the route: a request round-trips (nbench's waitService).
func waitService(_ connection: SkeinConnection, cluster: String) async throws {
    let deadline = monoNs() + 10_000_000_000
    let probe = ByteBuffer(repeating: 0, count: 16)
    while monoNs() < deadline {
        if (try? await connection.request(cluster: cluster, probe, timeout: .milliseconds(200))) != nil { return }
        await sleepTask(seconds: 0.02)
    }
    complain("service not reachable")
    exit(3)
}

// MARK: - Open loop

final class OpenLoopCounters: Sendable {
    let completed = Atomic<Int>(0)
    let errors = Atomic<Int>(0)
    let sendElapsedNs = Atomic<Int64>(-1)
}

/// nbench -mode lat: requests leave on a fixed schedule (one every 1/rate s) from a dedicated
/// thread, each as its own task, whether or not earlier ones were answered; a late tick sends
/// everything overdue at once (catch-up, like wrk2). Latency is measured from the intended
/// send time (coordinated-omission corrected) and, for reference, from the actual send time.
func runOpenLoop(_ f: Flags) async throws {
    let urls = try f.endpoints("pub", "127.0.0.1:55555")
    let subj = f.string("subj", "svc")
    let size = max(16, try f.int("size", 64))
    let rate = try f.double("rate", 1000)
    let dur = try f.seconds("dur", 10)
    let warm = try f.seconds("warm", 0)
    let conc = max(1, try f.int("c", 1))
    let timeout = try f.seconds("timeout", 60)
    let label = f.string("label", "")

    let warmN = Int(rate * warm)
    let total = (dur > 0 ? Int(rate * dur) : try f.int("n", 1_000_000)) + warmN
    let interval = 1e9 / rate

    var connections: [SkeinConnection] = []
    for i in 0..<conc {
        let connection = try await Skein.connect(to: urls[i % urls.count])
        try await waitService(connection, cluster: subj)
        connections.append(connection)
    }
    let sent = SlotTable(count: total)
    let received = SlotTable(count: total)  // ns since t0; -1 pending, -2 failed
    let counters = OpenLoopCounters()
    let payload = ByteBuffer(repeating: 0, count: size)
    let requestTimeout = Duration.nanoseconds(Int64(timeout * 1e9))
    let senders = connections

    let t0 = monoNs()
    let scheduler = Thread {
        var next = 0
        while next < total {
            let now = monoNs() - t0
            while next < total && Int64(Double(next) * interval) <= now {
                let seq = next
                let connection = senders[seq % conc]
                sent[seq] = monoNs() - t0
                Task(executorPreference: connection.taskExecutor) {
                    do {
                        _ = try await connection.request(cluster: subj, payload, timeout: requestTimeout)
                        received[seq] = monoNs() - t0
                    } catch {
                        received[seq] = -2
                        counters.errors.wrappingAdd(1, ordering: .relaxed)
                    }
                    counters.completed.wrappingAdd(1, ordering: .releasing)
                }
                next += 1
            }
            if next < total {
                // nanosleep overshoots by tens of µs: aim 50 µs early, as nbench does.
                var wait = Int64(Double(next) * interval) - (monoNs() - t0)
                if wait > 100_000 { wait -= 50_000 }
                threadSleep(ns: wait)
            }
        }
        counters.sendElapsedNs.store(monoNs() - t0, ordering: .releasing)
    }
    scheduler.start()

    var timedOut = false
    while counters.completed.load(ordering: .acquiring) < total {
        await sleepTask(seconds: 0.005)
        let sendElapsed = counters.sendElapsedNs.load(ordering: .acquiring)
        if sendElapsed >= 0 && Double(monoNs() - t0 - sendElapsed) / 1e9 > timeout {
            timedOut = true
            break
        }
    }
    while counters.sendElapsedNs.load(ordering: .acquiring) < 0 { await sleepTask(seconds: 0.005) }
    let elapsed = Double(monoNs() - t0) / 1e9
    let sendElapsed = Double(counters.sendElapsedNs.load(ordering: .acquiring)) / 1e9

    var corrected = newHistogram()
    var uncorrected = newHistogram()
    var lag = newHistogram()
    var receivedCount = 0
    for seq in warmN..<total {
        let at = received[seq]
        guard at >= 0 else { continue }
        receivedCount += 1
        let intended = Int64(Double(seq) * interval)
        let sentAt = sent[seq]
        corrected.recordNs(at - intended)
        uncorrected.recordNs(at - sentAt)
        lag.recordNs(sentAt - intended)
    }
    emit(
        [
            ("mode", .string("lat")), ("rate", .number(rate)), ("sent", .int(Int64(total - warmN))),
            ("warm_n", .int(Int64(warmN))), ("recv", .int(Int64(receivedCount))),
            ("errors", .int(Int64(counters.errors.load(ordering: .relaxed)))), ("timed_out", .bool(timedOut)),
            ("size", .int(Int64(size))), ("conns", .int(Int64(conc))),
            ("send_rate_achieved", .number(Double(total) / sendElapsed)), ("elapsed_s", .number(elapsed)),
            ("co_corrected_us", percentiles(corrected)), ("uncorrected_us", percentiles(uncorrected)),
            ("sched_lag_us", percentiles(lag)),
        ], label: label)
    for connection in connections { try? await connection.close() }
}

// MARK: - Closed loop

final class ClosedLoopState: Sendable {
    let stop = Atomic<Bool>(false)
    let measuring = Atomic<Bool>(false)
    let count = Atomic<Int>(0)
    let errors = Atomic<Int>(0)
}

/// nbench -mode closed: -c tasks, each sending its next request as soon as the previous one is
/// answered, over -conns connections. For maximum throughput only: its latency is NOT
/// coordinated-omission corrected.
func runClosedLoop(_ f: Flags) async throws {
    let urls = try f.endpoints("pub", "127.0.0.1:55555")
    let subj = f.string("subj", "svc")
    let size = try f.int("size", 64)
    let conc = max(1, try f.int("c", 1))
    let nconns = max(1, try f.int("conns", 1))
    let dur = try f.seconds("dur", 10)
    let warm = try f.seconds("warm", 0)
    let label = f.string("label", "")

    var connections: [SkeinConnection] = []
    for i in 0..<nconns {
        let connection = try await Skein.connect(to: urls[i % urls.count])
        try await waitService(connection, cluster: subj)
        connections.append(connection)
    }
    let payload = ByteBuffer(repeating: 0, count: size)
    let state = ClosedLoopState()
    let requesters = connections
    let (merged, measured) = await withTaskGroup(of: LatencyHistogram.self) { group in
        for g in 0..<conc {
            let connection = requesters[g % nconns]
            group.addTask(executorPreference: connection.taskExecutor) {
                var histogram = newHistogram()
                while !state.stop.load(ordering: .relaxed) {
                    let start = monoNs()
                    do {
                        _ = try await connection.request(cluster: subj, payload, timeout: .seconds(5))
                        if state.measuring.load(ordering: .relaxed) {
                            histogram.recordNs(monoNs() - start)
                            state.count.wrappingAdd(1, ordering: .relaxed)
                        }
                    } catch {
                        if state.measuring.load(ordering: .relaxed) { state.errors.wrappingAdd(1, ordering: .relaxed) }
                    }
                }
                return histogram
            }
        }
        await sleepTask(seconds: warm)
        state.measuring.store(true, ordering: .relaxed)
        let start = monoNs()
        await sleepTask(seconds: dur)
        state.measuring.store(false, ordering: .relaxed)
        let measured = Double(monoNs() - start) / 1e9
        state.stop.store(true, ordering: .relaxed)
        var merged = newHistogram()
        for await histogram in group { merged.add(histogram) }
        return (merged, measured)
    }
    emit(
        [
            ("mode", .string("closed")), ("c", .int(Int64(conc))), ("conns", .int(Int64(nconns))), ("size", .int(Int64(size))),
            ("req_per_s", .number(Double(state.count.load(ordering: .relaxed)) / measured)),
            ("errors", .int(Int64(state.errors.load(ordering: .relaxed)))),
            ("lat_us_closed_loop_not_CO_corrected", percentiles(merged)),
        ], label: label)
    for connection in connections { try? await connection.close() }
}

/// -mode survey: `-n` surveys of cluster `-subj`, one after another, each until its SURVEY END;
/// latency from the call to the end (µs), and whether every one was answered by `-expect`
/// members (a survey ends early only when every member answered).
func runSurveys(_ f: Flags) async throws {
    let url = try f.endpoints("pub", "127.0.0.1:55555")[0]
    let n = try f.int("n", 10_000)
    let expect = try f.int("expect", 1)
    let cluster = f.string("subj", "svc")
    let size = try f.int("size", 64)
    let label = f.string("label", "")
    let payload = ByteBuffer(repeating: UInt8(ascii: "a"), count: size)
    let connection = try await Skein.connect(to: url)
    // The members are routed once every one of them answers.
    let ready = monoNs() + 15_000_000_000
    while true {
        let survey = try await connection.survey(cluster: cluster, payload, timeout: .seconds(2))
        for try await _ in survey {}
        if survey.tally?.answered == expect { break }
        if monoNs() > ready { throw BenchError.failed("never \(expect) members: \(String(describing: survey.tally))") }
        await sleepTask(seconds: 0.05)
    }
    var histogram = newHistogram()
    var incomplete = 0
    let t0 = monoNs()
    for _ in 0..<n {
        let start = monoNs()
        let survey = try await connection.survey(cluster: cluster, payload, timeout: .seconds(5))
        for try await _ in survey {}
        histogram.recordNs(monoNs() - start)
        if survey.tally?.answered != expect { incomplete += 1 }
    }
    let elapsed = Double(monoNs() - t0) / 1e9
    emit(
        [
            ("mode", .string("survey")), ("n", .int(Int64(n))), ("expect", .int(Int64(expect))),
            ("incomplete", .int(Int64(incomplete))), ("surveys_per_s", .number(Double(n) / elapsed)),
            ("lat_us", percentiles(histogram)),
        ], label: label)
    try? await connection.close()
}
