import Foundation
import NIOCore
import Skein

// MARK: - Tunnel receiver (members)

/// -mode tunrecv: -ns members of cluster -subj accepting tunnels. On each tunnel: echoes
/// "probe", takes "start BYTES" as the size of the transfer that follows, counts data
/// messages, and answers "done BYTES" once all of it arrived. Prints READY; lives until killed.
func runTunnelReceivers(_ f: Flags) async throws {
    let urls = try f.endpoints("sub", "127.0.0.1:55555")
    let ns = try f.int("ns", 1)
    let subj = f.string("subj", "tun")
    let life = try f.seconds("life", 1800)
    var members: [SkeinConnection] = []
    for i in 0..<ns {
        members.append(
            try await Skein.serve(
                cluster: subj, to: urls[i % urls.count],
                request: { _ in throw SkeinFault("tunnels only") },
                tunnel: { tunnel in await receiveTransfer(tunnel) }))
    }
    say("READY")
    await sleepTask(seconds: life)
    withExtendedLifetime(members) {}
}

private func receiveTransfer(_ tunnel: Tunnel) async {
    var expected: UInt64 = 0
    var received: UInt64 = 0
    do {
        for try await message in tunnel {
            if message.readableBytes < 64, let text = message.getString(at: message.readerIndex, length: message.readableBytes) {
                if text == "probe" {
                    try await tunnel.send(message)
                    continue
                }
                if text.hasPrefix("start "), let bytes = UInt64(text.dropFirst(6)) {
                    (expected, received) = (bytes, 0)
                    continue
                }
            }
            received += UInt64(message.readableBytes)
            if expected > 0 && received >= expected {
                try await tunnel.send("done \(received)")
                expected = 0
            }
        }
    } catch {
        complain("tunnel receiver: \(error)")
    }
}

// MARK: - Tunnel sender

/// -mode tunsend: opens one tunnel to cluster -subj, proves it with an echoed probe, then sends
/// -bytes (default 256 MiB) as messages of -size bytes and waits for the receiver's "done".
/// The transfer is many times the windows (the binding's 16 MiB receive window plus the
/// relay's per-direction buffer), so the sender spends the run waiting on allowance:
/// throughput here is with flow control engaged.
func runTunnelSender(_ f: Flags) async throws {
    let url = try f.endpoints("pub", "127.0.0.1:55555")[0]
    let subj = f.string("subj", "tun")
    let size = max(64, try f.int("size", 64 << 10))
    let bytes = try f.int("bytes", 256 << 20)
    let label = f.string("label", "")
    let n = max(1, bytes / size)
    let total = UInt64(n * size)

    let connection = try await Skein.connect(to: url)
    // Routes are proven before the clock: with skein/1 a relay that does not know of the
    // receiver yet (its metadata is still travelling) answers "no members" at once, so retry.
    let tunnel = try await openWhenRouted(connection, cluster: subj, within: .seconds(10))
    try await tunnel.send("probe")
    guard let echo = try await tunnel.receive(), String(buffer: echo) == "probe" else {
        throw BenchError.failed("tunnel probe not echoed")
    }
    try await tunnel.send("start \(total)")
    let payload = ByteBuffer(repeating: UInt8(ascii: "a"), count: size)
    let t0 = monoNs()
    for _ in 0..<n { try await tunnel.send(payload) }
    let sendDone = monoNs()
    let answer = try await tunnel.receive().map { String(buffer: $0) } ?? ""
    let t1 = monoNs()
    try? await tunnel.close()
    let elapsed = Double(t1 - t0) / 1e9
    let ok = answer == "done \(total)"
    if !ok { complain("tunnel sender: receiver answered \(answer.debugDescription)") }
    emit(
        [
            ("mode", .string("tunnel")), ("size", .int(Int64(size))), ("n", .int(Int64(n))), ("bytes", .int(Int64(total))),
            ("mib_per_s", .number(Double(total) / 1_048_576 / elapsed)), ("msgs_per_s", .number(Double(n) / elapsed)),
            ("send_s", .number(Double(sendDone - t0) / 1e9)), ("elapsed_s", .number(elapsed)),
            ("answer", .string(answer)), ("ok", .bool(ok)),
        ], label: label)
    try? await connection.close()
}

// MARK: - Idle connections

/// -mode idle: opens -conns plain client connections (16 handshakes at a time), prints one
/// JSON line and READY, and holds them until killed (or -life).
func runIdle(_ f: Flags) async throws {
    let url = try f.endpoints("pub", "127.0.0.1:55555")[0]
    let count = try f.int("conns", 1000)
    let life = try f.seconds("life", 1800)
    let label = f.string("label", "")
    let t0 = monoNs()
    var connections: [SkeinConnection] = []
    connections.reserveCapacity(count)
    while connections.count < count {
        let batch = min(16, count - connections.count)
        try await withThrowingTaskGroup(of: SkeinConnection.self) { group in
            for _ in 0..<batch { group.addTask { try await Skein.connect(to: url) } }
            for try await connection in group { connections.append(connection) }
        }
    }
    emit(
        [("mode", .string("idle")), ("conns", .int(Int64(connections.count))), ("open_s", .number(Double(monoNs() - t0) / 1e9))],
        label: label)
    say("READY")
    await sleepTask(seconds: life)
    withExtendedLifetime(connections) {}
}

/// Opens a tunnel, retrying "no members" every 50 ms until `within` has passed.
private func openWhenRouted(_ connection: SkeinConnection, cluster: String, within: Duration) async throws -> Tunnel {
    let deadline = ContinuousClock.now + within
    while true {
        do {
            return try await connection.tunnel(cluster: cluster, timeout: .seconds(10))
        } catch SkeinError.Code.noMembers where ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}
