// receive-file: serves the cluster "files" and saves every file sent through a tunnel.
//
//     swift run --package-path Examples receive-file /tmp/inbox          # terminal 1
//     swift run --package-path Examples send-file ./some-file.bin        # terminal 2
//
// A tunnel is an ordered, flow-controlled stream between one client and one member of a
// cluster. The protocol of this example, over it: the first message is the file's name, every
// later message is the next piece of its content, and the sender's graceful close marks the
// end. A tunnel that fails instead (the sender died, the relay went away) leaves no file.
// Several transfers may run at once, each on a tunnel (and a task) of its own.
// SKEIN_RELAY=HOST:PORT (or PORT, or a Unix socket path) picks another relay.

import Dispatch
import Foundation
import NIOCore
import Skein

@main
struct ReceiveFile {
    static func main() async {
        let arguments = CommandLine.arguments
        guard arguments.count == 2 else { fail("usage: receive-file DIRECTORY", status: 64) }
        let directory = URL(fileURLWithPath: arguments[1], isDirectory: true)
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            fail("cannot create \(directory.path): \(error)", status: 73)
        }

        do {
            // A member of "files" that handles tunnels only: a request to the cluster gets the
            // protocol's default answer, a fault saying this member does not serve requests.
            let connection = try await Skein.serve(
                cluster: "files", to: relayEndpoint(), handler: FileReceiver(directory: directory))
            log("saving files sent to cluster \"files\" into \(directory.path); Ctrl-C to stop")

            let interrupt = onInterrupt { Task { try? await connection.close() } }
            defer { interrupt.cancel() }

            let reason = await connection.waitUntilClosed()
            log(reason.isEmpty ? "stopped" : "connection closed: \(reason)")
            exit(reason.isEmpty ? 0 : 4)
        } catch {
            fail("\(error) (is `skein relay --dev` running?)", status: 4)
        }
    }
}

struct FileReceiver: ClusterHandler {
    let directory: URL

    /// Runs on a task of its own for each tunnel a client opens; the binding closes the tunnel
    /// when this returns.
    func handleTunnel(_ tunnel: Tunnel) async {
        var destination: URL?
        do {
            // The first message names the file. Only its last path component is used, so a
            // sender cannot write outside the directory.
            guard let header = try await tunnel.receive() else { return }
            let name = safeName(String(buffer: header))
            let target = uniqueURL(for: name)
            destination = target
            guard FileManager.default.createFile(atPath: target.path, contents: nil) else {
                throw SkeinFault("cannot create \(target.path)")
            }
            let file = try FileHandle(forWritingTo: target)
            defer { try? file.close() }

            // Every later message is content. `receive` hands out whole messages in order and
            // returns nil once the sender has closed the tunnel gracefully, after everything it
            // sent; reading is what grants the sender more room, so a slow disk slows the sender.
            let started = ContinuousClock.now
            var bytes = 0
            while let piece = try await tunnel.receive() {
                try piece.withUnsafeReadableBytes { try file.write(contentsOf: $0) }
                bytes += piece.readableBytes
            }
            let seconds = max((ContinuousClock.now - started) / .seconds(1), 0.001)
            log("received \(name): \(bytes) bytes in \(String(format: "%.2f", seconds)) s → \(target.path)")
        } catch {
            // The tunnel failed: what arrived is not the whole file, so keep nothing.
            if let destination { try? FileManager.default.removeItem(at: destination) }
            log("transfer failed: \(error)")
        }
    }

    private func safeName(_ requested: String) -> String {
        let name = URL(fileURLWithPath: requested).lastPathComponent
        return name.isEmpty || name == "." || name == ".." || name == "/" ? "unnamed" : name
    }

    /// `name`, or `name.1`, `name.2`… if it already exists.
    private func uniqueURL(for name: String) -> URL {
        var candidate = directory.appendingPathComponent(name)
        var n = 0
        while FileManager.default.fileExists(atPath: candidate.path) {
            n += 1
            candidate = directory.appendingPathComponent("\(name).\(n)")
        }
        return candidate
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
        fail("SKEIN_RELAY must be HOST:PORT, PORT or a socket path, not \(value.debugDescription)", status: 64)
    }
    return endpoint
}

func log(_ line: String) {
    FileHandle.standardError.write(Data("receive-file: \(line)\n".utf8))
}

func fail(_ message: String, status: Int32) -> Never {
    log(message)
    exit(status)
}
