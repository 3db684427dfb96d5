// chat: a chat room over publish/subscribe.
//
//     swift run --package-path Examples chat lobby alice     # terminal 1
//     swift run --package-path Examples chat lobby bob       # terminal 2
//
// Each line typed is published to the topic "chat.ROOM" as "NAME: line"; every line that
// others publish there is printed. There is no server: every participant is a subscriber and
// a publisher of the same topic, and the relay delivers each event to every subscription.
// End of input (Ctrl-D) leaves the room. Names should be unique within a room: a participant
// recognizes its own lines (which it receives too) by its name.
// SKEIN_RELAY=HOST:PORT (or PORT, or a Unix socket path) picks another relay.

import Foundation
import NIOCore
import Skein

@main
struct Chat {
    static func main() async {
        let arguments = CommandLine.arguments
        guard arguments.count == 3, !arguments[1].isEmpty, !arguments[2].isEmpty else {
            fail("usage: chat ROOM NAME", status: 64)
        }
        let (room, name) = (arguments[1], arguments[2])
        let topic = "chat.\(room)"
        let mine = "\(name): "

        do {
            let skein = try await Skein.connect(to: relayEndpoint())

            // Subscribe before announcing ourselves: the subscription is in place on the relay
            // before anything this connection publishes afterwards.
            let subscription = try await skein.subscribe(topic: topic)

            // Print what the others say. Events from one publisher arrive in the order they
            // were published; events from different publishers may interleave.
            let printer = Task {
                do {
                    for try await event in subscription {
                        let line = String(buffer: event)
                        if line.hasPrefix(mine) || line.hasPrefix("* \(name) ") { continue }  // our own
                        write(line + "\n")
                    }
                } catch {
                    // The connection ended. After our own close below that is expected;
                    // otherwise say why (the relay went away, with its reason).
                    if let error = error as? SkeinError, error.code == .connectionClosed,
                        error.detail.isEmpty || error.detail.contains("this client") {
                        return
                    }
                    FileHandle.standardError.write(Data("chat: \(error)\n".utf8))
                    exit(4)
                }
            }

            FileHandle.standardError.write(Data("chat: in room \(room) as \(name); type lines, Ctrl-D to leave\n".utf8))
            try await skein.publish(topic: topic, "* \(name) joined")
            for await line in standardInputLines() {
                // `publish` returns once the event is queued; if the relay reads more slowly
                // than we publish, it waits, so memory stays bounded.
                try await skein.publish(topic: topic, mine + line)
            }
            try await skein.publish(topic: topic, "* \(name) left")

            // A graceful close delivers everything already published before the connection ends.
            try await skein.close()
            await printer.value
        } catch {
            fail("\(error) (is `skein relay --dev` running?)", status: 4)
        }
    }
}

/// Standard input's lines, read on a thread of their own (a blocking read must not hold one of
/// the few threads that run Swift's tasks).
func standardInputLines() -> AsyncStream<String> {
    let (lines, continuation) = AsyncStream.makeStream(of: String.self)
    Thread {
        while let line = readLine() {
            continuation.yield(line)
        }
        continuation.finish()
    }.start()
    return lines
}

/// Writes to stdout unbuffered, so lines show at once even when stdout is a pipe.
func write(_ text: String) {
    FileHandle.standardOutput.write(Data(text.utf8))
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
    FileHandle.standardError.write(Data("chat: \(message)\n".utf8))
    exit(status)
}
