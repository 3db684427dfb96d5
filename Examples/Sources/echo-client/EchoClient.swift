// echo-client: sends each argument as a request to the cluster "echo" and prints the replies.
//
//     swift run --package-path Examples echo-client hello mesh    # prints "hello" and "mesh"
//
// It addresses the cluster, never a machine: whichever member the relay picks answers. With
// no member running, the relay answers "timed out" after the request's timeout.
// SKEIN_RELAY=HOST:PORT (or PORT, or a Unix socket path) picks another relay.

import Foundation
import NIOCore
import Skein

@main
struct EchoClient {
    static func main() async {
        let messages = CommandLine.arguments.count > 1 ? Array(CommandLine.arguments.dropFirst()) : ["hello"]
        let skein: SkeinConnection
        do {
            // A plain client: it can call clusters, publish and subscribe, but serves nothing.
            skein = try await Skein.connect(to: relayEndpoint())
        } catch {
            fail("\(error) (is `skein relay --dev` running?)", status: 4)
        }
        do {
            // Requests may run concurrently on one connection; these go one after another so
            // the replies print in order.
            for message in messages {
                let started = ContinuousClock.now
                // The relay owns the deadline: exactly one answer comes back, the member's
                // reply, its fault (thrown as SkeinError.remoteFault), or a timeout.
                let reply = try await skein.request(cluster: "echo", message, timeout: .seconds(2))
                let elapsed = ContinuousClock.now - started
                print(String(buffer: reply))
                FileHandle.standardError.write(Data("echo-client: \(reply.readableBytes) bytes back in \(elapsed)\n".utf8))
            }
            try await skein.close()
        } catch SkeinError.Code.timedOut {
            fail("no answer within 2 s: is an echo-service running?", status: 3)
        } catch let error as SkeinError where error.code == .remoteFault {
            fail("the member answered with a fault: \(error.detail)", status: 1)
        } catch {
            fail("\(error)", status: 4)
        }
    }
}

/// The relay to use: $SKEIN_RELAY (HOST:PORT, PORT, or a Unix socket path), else 127.0.0.1:55555.
func relayEndpoint() -> RelayEndpoint {
    guard let value = ProcessInfo.processInfo.environment["SKEIN_RELAY"], !value.isEmpty else { return .default }
    if value.contains("/") { return .unixSocket(path: value) }
    guard let endpoint = RelayEndpoint(value) else {
        fail("SKEIN_RELAY must be HOST:PORT, PORT or a socket path, not \(value.debugDescription)", status: 64)
    }
    return endpoint
}

func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("echo-client: \(message)\n".utf8))
    exit(status)
}
