// send-file: streams a file through a tunnel to a member of the cluster "files"
// (see receive-file for the other side and for the tiny protocol they share).
//
//     swift run --package-path Examples send-file ./some-file.bin
//
// The file goes in 64 KiB messages. `Tunnel.send` waits whenever the receiver (through the
// relay) has not granted room for more, so a file of any size is sent in bounded memory, at
// the pace the receiver can write it.
// SKEIN_RELAY=HOST:PORT (or PORT, or a Unix socket path) picks another relay.

import Foundation
import NIOCore
import Skein

@main
struct SendFile {
    static func main() async {
        let arguments = CommandLine.arguments
        guard arguments.count == 2 else { fail("usage: send-file PATH", status: 64) }
        let url = URL(fileURLWithPath: arguments[1])
        let file: FileHandle
        do {
            file = try FileHandle(forReadingFrom: url)
        } catch {
            fail("cannot read \(url.path): \(error)", status: 66)
        }
        defer { try? file.close() }

        do {
            let skein = try await Skein.connect(to: relayEndpoint())
            // One member of "files" accepts the tunnel, and stays the other end for its life.
            let tunnel: Tunnel
            do {
                tunnel = try await skein.tunnel(cluster: "files", timeout: .seconds(5))
            } catch SkeinError.Code.timedOut {
                fail("no member of cluster \"files\" accepted the tunnel: is receive-file running?", status: 3)
            }

            let started = ContinuousClock.now
            try await tunnel.send(url.lastPathComponent)  // first message: the name
            var bytes = 0
            while let data = try file.read(upToCount: 64 << 10), !data.isEmpty {
                try await tunnel.send(ByteBuffer(bytes: data))
                bytes += data.count
            }
            // A graceful close: the receiver gets every message sent before it, then the end.
            try await tunnel.close()
            try await skein.close()

            let seconds = max((ContinuousClock.now - started) / .seconds(1), 0.001)
            let rate = Double(bytes) / seconds / Double(1 << 20)
            log("sent \(url.lastPathComponent): \(bytes) bytes in \(String(format: "%.2f s, %.1f MiB/s", seconds, rate))")
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

func log(_ line: String) {
    FileHandle.standardError.write(Data("send-file: \(line)\n".utf8))
}

func fail(_ message: String, status: Int32) -> Never {
    log(message)
    exit(status)
}
