// skein-bench: Skein load generator, the counterpart of the NATS peer's nbench (Go).
// Every role runs in its own process, started by Benchmarks/run. Flags and JSON output keys
// mirror nbench so one runner and one table serve both systems.
//
// Modes:
//   pubsub : -only sub (subscribers; READY, then JSON when done) or -only pub (publishers;
//            wait until -ns subscribers answered a probe, then publish -n messages flat out
//            or paced with -prate)
//   resp   : -ns members of cluster -subj that echo requests; READY, runs until killed or -life
//   lat    : open-loop requester at -rate req/s, latency from the INTENDED send time
//            (coordinated-omission corrected), -warm excluded, -dur measured
//   closed : -c concurrent closed-loop requesters over -conns connections (max throughput)
//   tunrecv: -ns members of cluster -subj that accept tunnels and count what arrives
//   tunsend: opens a tunnel to cluster -subj and sends -bytes in messages of -size (MiB/s)
//   idle   : opens -conns connections and holds them (READY), for the relay's RSS
//   subs   : one connection holding -literals N and -patterns M subscriptions that match no
//            bench topic (READY), the load a publish's subject lookup must not feel
//   survey : -n surveys of cluster -subj one after another (skein/2), latency to each end
//   link   : relay-to-relay link throughput in one process: -variant raw|seal1|link (Link.swift)
// Output: one JSON line on stdout (READY lines first for long-lived roles).
import Foundation
import Skein

let flags: Flags
do {
    flags = try Flags(Array(CommandLine.arguments.dropFirst()))
} catch {
    complain("\(error)")
    exit(1)
}

do {
    let mode = flags.string("mode", "pubsub")
    let timeout = try flags.seconds("timeout", 60)
    let dur = try flags.seconds("dur", 10)
    let warm = try flags.seconds("warm", 0)
    let life = try flags.seconds("life", 1800)
    armHardTimeout(seconds: ["resp", "tunrecv", "idle", "subs"].contains(mode) ? life + 5 : timeout + dur + warm + 30)
    switch mode {
    case "pubsub": try await runPubSub(flags)
    case "resp": try await runResponders(flags)
    case "lat": try await runOpenLoop(flags)
    case "closed": try await runClosedLoop(flags)
    case "tunrecv": try await runTunnelReceivers(flags)
    case "tunsend": try await runTunnelSender(flags)
    case "idle": try await runIdle(flags)
    case "subs": try await runSubscriptionHolder(flags)
    case "survey": try await runSurveys(flags)
    case "link": try await runLinkBench(flags)
    default: throw BenchError.usage("bad -mode \(mode)")
    }
    exit(0)
} catch let error as BenchError {
    complain("\(error)")
    if case .usage = error { exit(1) }
    exit(3)
} catch {
    complain("skein-bench: \(error)")
    exit(2)
}
