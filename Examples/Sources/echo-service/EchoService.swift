// echo-service: a member of the cluster "echo" that answers every request with its own body.
//
//     skein relay --dev                                   # terminal 1
//     swift run --package-path Examples echo-service      # terminal 2 (run several: requests are balanced)
//     swift run --package-path Examples echo-client hi    # terminal 3
//
// SKEIN_RELAY=HOST:PORT (or PORT, or the path of the relay's Unix socket) picks another relay
// than 127.0.0.1:55555. Ctrl-C leaves the cluster gracefully.

import Dispatch
import Foundation
import NIOCore
import Skein

@main
struct EchoService {
    static func main() async {
        let relay = relayEndpoint()
        do {
            // `serve` connects as a member of the cluster: from now on the relay balances the
            // cluster's requests over all its members, this one included. Each request runs the
            // closure on a task of its own; what it returns is the reply, and an error it
            // throws reaches the caller as a fault (`SkeinFault("…")` sends exactly its text).
            let connection = try await Skein.serve(cluster: "echo", to: relay) { request in
                log("request of \(request.body.readableBytes) bytes (\(request.timeout) left to answer)")
                return request.body
            }
            log("serving cluster \"echo\" through the relay at \(relay); Ctrl-C to stop")

            // Ctrl-C: close the connection instead of dying, so the relay stops routing
            // requests here at once and those already answered are still delivered.
            let interrupt = onInterrupt { Task { try? await connection.close() } }
            defer { interrupt.cancel() }

            // The connection ends on Ctrl-C, or when the relay goes away (with its reason).
            let reason = await connection.waitUntilClosed()
            log(reason.isEmpty ? "left the cluster" : "connection closed: \(reason)")
            exit(reason.isEmpty ? 0 : 4)
        } catch {
            log("cannot serve: \(error) (is `skein relay --dev` running?)")
            exit(4)
        }
    }
}

/// Runs `action` on Ctrl-C (SIGINT) instead of dying. Not on the main actor: the handler runs
/// on a dispatch queue, and a closure written inside `main()` would be isolated to the main actor.
func onInterrupt(_ action: @escaping @Sendable () -> Void) -> any DispatchSourceSignal {
    signal(SIGINT, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
    source.setEventHandler(handler: action)
    source.resume()
    return source
}

/// The relay to use: $SKEIN_RELAY (HOST:PORT, PORT, or a Unix socket path), else 127.0.0.1:55555.
func relayEndpoint() -> RelayEndpoint {
    guard let value = ProcessInfo.processInfo.environment["SKEIN_RELAY"], !value.isEmpty else { return .default }
    if value.contains("/") { return .unixSocket(path: value) }
    guard let endpoint = RelayEndpoint(value) else {
        log("SKEIN_RELAY must be HOST:PORT, PORT or a socket path, not \(value.debugDescription)")
        exit(64)
    }
    return endpoint
}

func log(_ line: String) {
    FileHandle.standardError.write(Data("echo-service: \(line)\n".utf8))
}
