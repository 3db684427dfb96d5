// The client commands end to end: request, serve, broadcast, publish/subscribe, tunnel, each
// against a real dev relay.

import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("client commands against a dev relay", .timeLimit(.minutes(1)))
struct MessagingTests {
    @Test("request to an --echo member prints the body and exits 0")
    func requestEcho() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            _ = try await scope.serve(["echo", "--echo"], relay: relay)
            let result = try await scope.run(["request", "echo", "hello, mesh"] + relay.flag)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdoutText == "hello, mesh")
            #expect(result.stderr.isEmpty)
        }
    }

    @Test("request output is byte-exact when piped; on a terminal a newline ends a reply that lacks one")
    func requestNewlineOnlyOnTerminal() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            _ = try await scope.serve(["echo", "--echo"], relay: relay)
            // Piped (the harness writes stdout to a file): nothing added, nothing taken away.
            for body in ["no newline", "one newline\n", "two\n\n", ""] {
                let piped = try await scope.run(["request", "echo", "-"] + relay.flag, stdin: .bytes(Data(body.utf8)))
                #expect(piped.status == 0, "\(piped.stderr)")
                #expect(piped.stdout == Data(body.utf8), "\(body.debugDescription) came back as \(piped.stdoutText.debugDescription)")
            }
            // On a terminal (a pseudo-terminal here): one newline after a reply without one, none after
            // a reply that has one. The terminal shows "\n" as "\r\n".
            for (body, shown) in [("hello", "hello\r\n"), ("hello\n", "hello\r\n")] {
                let terminal = try PseudoTerminal()
                let child = try scope.spawn(["request", "echo", body] + relay.flag, stdout: terminal.slave)
                #expect(try await child.waitForExit() == 0, "\(child.stderr)")
                let screen = try await terminal.read(until: shown.utf8.count)
                #expect(screen == shown, "\(body.debugDescription) was shown as \(screen.debugDescription)")
            }
        }
    }

    @Test("request reads its body from stdin when absent or '-', byte for byte")
    func requestBodyFromStdin() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            _ = try await scope.serve(["echo", "--echo"], relay: relay)
            let body = randomBytes(100_000)
            let absent = try await scope.run(["request", "echo"] + relay.flag, stdin: .bytes(body))
            #expect(absent.status == 0, "\(absent.stderr)")
            #expect(absent.stdout.count == body.count)
            #expect(identical(absent.stdout, body))
            let dash = try await scope.run(["request", "echo", "-"] + relay.flag, stdin: .bytes(Data("from stdin".utf8)))
            #expect(dash.status == 0, "\(dash.stderr)")
            #expect(dash.stdoutText == "from stdin")
        }
    }

    @Test("request to a cluster without members: exit 6 and a message at once (skein/1)")
    func requestNoMembers() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let started = ContinuousClock.now
            let result = try await scope.run(["request", "nobody", "x", "--timeout", "30000"] + relay.flag)
            #expect(result.status == 6)
            #expect(result.stdout.isEmpty)
            #expect(result.stderr.contains("no members: nobody"), "stderr: \(result.stderr)")
            #expect(ContinuousClock.now - started < .seconds(15), "told at once, not at the 30 s timeout")
        }
    }

    @Test("--protocol v1.0-draft2: a request to a cluster without members times out: exit 3 and a message")
    func requestTimesOut() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let started = ContinuousClock.now
            let result = try await scope.run(["request", "nobody", "x", "--timeout", "200", "--protocol", "v1.0-draft2"] + relay.flag)
            let elapsed = ContinuousClock.now - started
            #expect(result.status == 3)
            #expect(result.stdout.isEmpty)
            #expect(result.stderr.contains("timed out"), "stderr: \(result.stderr)")
            #expect(elapsed >= .milliseconds(150) && elapsed < .seconds(5), "took \(elapsed)")
        }
    }

    @Test("serve -- CMD: stdout is the reply; a non-zero exit is a fault carrying its stderr")
    func serveCommand() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            _ = try await scope.serve(["upper", "--", "tr", "a-z", "A-Z"], relay: relay)
            _ = try await scope.serve(["faulty", "--", "sh", "-c", "cat >/dev/null; echo 'disk full' >&2; exit 2"], relay: relay)

            let reply = try await scope.run(["request", "upper", "quiet words"] + relay.flag)
            #expect(reply.status == 0, "\(reply.stderr)")
            #expect(reply.stdoutText == "QUIET WORDS")

            let fault = try await scope.run(["request", "faulty", "x"] + relay.flag)
            #expect(fault.status == 1)
            #expect(fault.stdout.isEmpty)
            #expect(fault.stderr.contains("disk full"), "stderr: \(fault.stderr)")
        }
    }

    @Test("serve -- CMD: a command slower than the request's timeout is stopped (it does not block SIGTERM)")
    func serveStopsSlowCommand() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let pidFile = scope.path("slow.pid").path
            _ = try await scope.serve(["slow", "--", "sh", "-c", "echo $$ >\"$0\"; exec sleep 60", pidFile], relay: relay)
            let outcome = try await scope.run(["request", "slow", "x", "--timeout", "300"] + relay.flag)
            #expect(outcome.status == 3, "\(outcome.stderr)")
            let text = try String(contentsOfFile: pidFile, encoding: .utf8)
            let pid = try #require(Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)))
            // serve sends SIGTERM when the request's time is up; a command spawned with the signal
            // blocked (as from a Dispatch thread) would sleep its full minute.
            try await waitFor("the slow command (pid \(pid)) to be stopped", within: .seconds(10)) { kill(pid, 0) != 0 }
        }
    }

    @Test("serve -- cat answers a 1 MiB request (the command's output is read while its input is written)")
    func serveCommandLargeBody() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            _ = try await scope.serve(["cat", "--", "cat"], relay: relay)
            let body = randomBytes(1 << 20)
            let result = try await scope.run(["request", "cat", "--timeout", "5000"] + relay.flag, stdin: .bytes(body))
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.count == body.count)
            #expect(identical(result.stdout, body))
        }
    }

    @Test("serve --echo --print-broadcasts prints each broadcast on a line")
    func broadcastPrinted() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let first = try await scope.serve(["hall", "--echo", "--print-broadcasts"], relay: relay)
            let second = try await scope.serve(["hall", "--echo", "--print-broadcasts"], relay: relay)
            for message in ["attention", "members"] {
                let result = try await scope.run(["broadcast", "hall", message] + relay.flag)
                #expect(result.status == 0, "\(result.stderr)")
            }
            for member in [first, second] {
                try await member.waitForStdout("two lines") { $0.text == "attention\nmembers\n" }
            }
        }
    }

    @Test("subscribe --count 2 prints two published events, one per line, and exits 0")
    func subscribeCount() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let subscriber = try scope.spawn(["subscribe", "news", "--count", "2"] + relay.flag)
            try await subscriber.waitForStderr("ready")
            for event in ["skein ships", "relays gossip"] {
                let result = try await scope.run(["publish", "news", event] + relay.flag)
                #expect(result.status == 0, "\(result.stderr)")
            }
            let status = try await subscriber.waitForExit()
            #expect(status == 0)
            #expect(subscriber.stdoutText == "skein ships\nrelays gossip\n")
        }
    }

    @Test("subscribe exits (141, as for SIGPIPE) when its stdout reader goes away")
    func subscribeStdoutClosed() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let pipe = Pipe()
            let subscriber = try scope.spawn(["subscribe", "news"] + relay.flag, stdout: pipe)
            // Only the child holds the reading end now; closing ours leaves no reader at all.
            try? pipe.fileHandleForReading.close()
            try? pipe.fileHandleForWriting.close()
            try await subscriber.waitForStderr("ready")
            _ = try await scope.run(["publish", "news", "into the void"] + relay.flag)
            #expect(try await subscriber.waitForExit() == 141)
        }
    }

    @Test("tunnel pipes 1 MiB through an --echo member and back, byte-identical")
    func tunnelRoundTrip() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            _ = try await scope.serve(["mirror", "--echo"], relay: relay)
            let input = scope.path("in.bin")
            let data = randomBytes(1 << 20)
            try data.write(to: input)
            let result = try await scope.run(["tunnel", "mirror", "--linger", "300"] + relay.flag, stdin: .file(input))
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.count == data.count)
            #expect(identical(result.stdout, data))
        }
    }

    @Test("tunnel ends (exit 0) when the member's command exits, even while stdin stays open")
    func tunnelClosedByMember() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            _ = try await scope.serve(["bye", "--", "sh", "-c", "echo bye"], relay: relay)
            let stdin = Pipe()  // held open: the tunnel never sees end of input
            let tunnel = try scope.spawn(["tunnel", "bye"] + relay.flag, stdin: .pipe(stdin))
            let status = try await tunnel.waitForExit(within: .seconds(5))
            #expect(status == 0, "\(tunnel.stderr)")
            #expect(tunnel.stdoutText == "bye\n")
            try? stdin.fileHandleForWriting.close()
        }
    }

    @Test("tunnel to a cluster without members: exit 6 (skein/1), or 3 at the timeout with --protocol v1.0-draft2")
    func tunnelTimesOut() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let result = try await scope.run(["tunnel", "nobody", "--timeout", "200"] + relay.flag)
            #expect(result.status == 6)
            #expect(result.stderr.contains("nobody"), "stderr: \(result.stderr)")
            let iris = try await scope.run(["tunnel", "nobody", "--timeout", "200", "--protocol", "v1.0-draft2"] + relay.flag)
            #expect(iris.status == 3)
            #expect(iris.stderr.contains("nobody"), "stderr: \(iris.stderr)")
            let bad = try await scope.run(["tunnel", "nobody", "--protocol", "v2"] + relay.flag)
            #expect(bad.status == 64)
        }
    }

    @Test("--socket PATH reaches a relay started with --client-socket")
    func unixSocket() async throws {
        try await withScope { scope in
            let socket = scope.path("relay.sock").path
            let relay = try await scope.startRelay(["--client-socket", socket])
            try await relay.child.waitForStderr(socket)
            let member = try scope.spawn(["serve", "echo", "--echo", "--socket", socket])
            try await member.waitForStderr("ready")
            let result = try await scope.run(["request", "echo", "over the socket", "--socket", socket])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdoutText == "over the socket")
        }
    }

    @Test(
        "an empty cluster or topic name is a usage error (64), not a crash",
        arguments: [
            ["request", "", "x"], ["broadcast", "", "x"], ["publish", "", "x"], ["subscribe", ""],
            ["serve", "", "--echo"], ["tunnel", ""],
        ])
    func emptyName(_ command: [String]) async throws {
        try await withScope { scope in
            let result = try await scope.run(command + ["--relay", "127.0.0.1:1"])
            #expect(result.status == 64, "stderr: \(result.stderr)")
            #expect(result.stderr.contains("must not be empty"), "stderr: \(result.stderr)")
        }
    }

    @Test(
        "a client command against a port where nothing listens exits 4",
        arguments: [
            ["request", "c", "x"], ["broadcast", "c", "x"], ["publish", "t", "x"], ["subscribe", "t"],
            ["serve", "c", "--echo"], ["tunnel", "c"],
        ])
    func nothingListening(_ command: [String]) async throws {
        try await withScope { scope in
            let port = try unusedPort()
            let result = try await scope.run(command + ["--relay", "127.0.0.1:\(port)"])
            #expect(result.status == 4, "stderr: \(result.stderr)")
            #expect(result.stderr.contains("cannot connect"), "stderr: \(result.stderr)")
        }
    }
}

/// A pseudo-terminal: `slave` is a FileHandle for a child's stdout, which `isatty` then reports
/// as a terminal; `read` gets what the child wrote from the master side.
final class PseudoTerminal {
    let master: Int32
    let slave: FileHandle

    init() throws {
        // Glibc's headers declare these only for _XOPEN_SOURCE, so Swift does not see them; they are in libc.
        let libc = dlopen(nil, RTLD_NOW)
        func function<T>(_ name: String, _ type: T.Type) throws -> T {
            guard let symbol = dlsym(libc, name) else { throw HarnessError("no \(name) in libc") }
            return unsafeBitCast(symbol, to: type)
        }
        let posixOpenpt = try function("posix_openpt", (@convention(c) (Int32) -> Int32).self)
        let grantpt = try function("grantpt", (@convention(c) (Int32) -> Int32).self)
        let unlockpt = try function("unlockpt", (@convention(c) (Int32) -> Int32).self)
        let ptsname = try function("ptsname", (@convention(c) (Int32) -> UnsafeMutablePointer<CChar>?).self)
        master = posixOpenpt(O_RDWR | O_NOCTTY)
        guard master >= 0, grantpt(master) == 0, unlockpt(master) == 0, let name = ptsname(master) else {
            throw HarnessError("cannot open a pseudo-terminal: \(String(cString: strerror(errno)))")
        }
        let fd = open(name, O_RDWR | O_NOCTTY)
        guard fd >= 0 else { throw HarnessError("cannot open \(String(cString: name))") }
        slave = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        _ = fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK)
    }

    deinit { close(master) }

    /// What the terminal has received, once it is at least `count` bytes, or whatever arrived within `limit`.
    func read(until count: Int, within limit: Duration = .seconds(5)) async throws -> String {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + limit
        while received.count < count && ContinuousClock.now < deadline {
            let n = Glibc.read(master, &chunk, chunk.count)
            if n > 0 { received += chunk[0..<n]; continue }
            try await Task.sleep(for: .milliseconds(10))
        }
        // Anything more that is already there (an extra newline would be).
        try await Task.sleep(for: .milliseconds(50))
        let n = Glibc.read(master, &chunk, chunk.count)
        if n > 0 { received += chunk[0..<n] }
        return String(decoding: received, as: UTF8.self)
    }
}
