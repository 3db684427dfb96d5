// `skein keygen` and the relay's own checks: key files, refused flags, graceful signals.

import Foundation
import SkeinCrypto
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("keygen", .timeLimit(.minutes(1)))
struct KeygenTests {
    @Test("keygen -o PATH writes a valid key file of mode 0600")
    func writesKey() async throws {
        try await withScope { scope in
            let path = scope.path("net.key").path
            let result = try await scope.run(["keygen", "-o", path])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(try mode(of: path) == 0o600)
            let key = try NetworkKey.load(fromFile: path)
            #expect(result.stdoutText.contains(key.id), "keygen should print the key id; stdout: \(result.stdoutText)")
        }
    }

    @Test("keygen refuses to overwrite without --force, and overwrites with it")
    func refusesOverwrite() async throws {
        try await withScope { scope in
            let path = scope.path("net.key").path
            #expect(try await scope.run(["keygen", "-o", path]).status == 0)
            let original = try Data(contentsOf: URL(fileURLWithPath: path))

            let again = try await scope.run(["keygen", "-o", path])
            #expect(again.status != 0)
            #expect(again.stderr.contains("--force"), "stderr: \(again.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == original, "the existing key must be untouched")

            // --force replaces it, and leaves a loose mode tightened.
            #expect(chmod(path, 0o644) == 0)
            let forced = try await scope.run(["keygen", "-o", path, "--force"])
            #expect(forced.status == 0, "\(forced.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) != original)
            #expect(try mode(of: path) == 0o600)
            _ = try NetworkKey.load(fromFile: path)
        }
    }
}

/// A key file the relay must refuse.
struct BadKeyFile: Sendable, CustomTestStringConvertible {
    var name: String
    var contents: String
    var mode: mode_t
    /// Text the refusal must contain.
    var message: String
    var testDescription: String { name }

    static let all = [
        BadKeyFile(
            name: "readable by others (0644)",
            contents: "skein-key-v1:" + String(repeating: "ab", count: 32) + "\n", mode: 0o644,
            message: "chmod 600"),
        BadKeyFile(name: "empty", contents: "", mode: 0o600, message: "empty"),
        BadKeyFile(name: "malformed", contents: "not a key\n", mode: 0o600, message: "malformed"),
        BadKeyFile(
            name: "too short", contents: "skein-key-v1:abcd\n", mode: 0o600, message: "malformed"),
    ]
}

@Suite("relay", .timeLimit(.minutes(1)))
struct RelayTests {
    @Test("relay --key-file refuses a bad key file with a clear message", arguments: BadKeyFile.all)
    func refusesKeyFile(_ bad: BadKeyFile) async throws {
        try await withScope { scope in
            let path = scope.path("bad.key").path
            try Data(bad.contents.utf8).write(to: URL(fileURLWithPath: path))
            #expect(chmod(path, bad.mode) == 0)
            let result = try await scope.run(["relay", "--key-file", path, "--client-port", "0"])
            #expect(result.status == 78, "stderr: \(result.stderr)")
            #expect(result.stderr.contains(bad.message), "stderr: \(result.stderr)")
            #expect(result.stderr.contains("bad.key"), "the message should name the file; stderr: \(result.stderr)")
            #expect(!result.stderr.contains("relay ready"))
        }
    }

    @Test("relay --key-file runs with a key from keygen")
    func acceptsKeyFile() async throws {
        try await withScope { scope in
            let path = scope.path("net.key").path
            #expect(try await scope.run(["keygen", "-o", path]).status == 0)
            let relay = try scope.spawn(["relay", "--key-file", path, "--client-port", "0", "--admin-port", "0"], name: "relay")
            try await relay.waitForStderr("relay ready")
            let key = try NetworkKey.load(fromFile: path)
            #expect(relay.stderr.contains(key.id), "the relay should log the key id")
            relay.send(SIGTERM)
            #expect(try await relay.waitForExit() == 0)
        }
    }

    @Test("relay refuses --seed (no membership yet) with a clear message")
    func refusesSeed() async throws {
        try await withScope { scope in
            let result = try await scope.run(["relay", "--dev", "--client-port", "0", "--seed", "x:1"])
            #expect(result.status == 64, "stderr: \(result.stderr)")
            #expect(result.stderr.contains("--seed"), "stderr: \(result.stderr)")
            #expect(!result.stderr.contains("relay ready"))
        }
    }

    @Test("relay exits 0 on a signal and closes its connections with a reason", arguments: [SIGTERM, SIGINT])
    func gracefulSignal(_ signo: Int32) async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let member = try await scope.serve(["echo", "--echo"], relay: relay)
            relay.child.send(signo)
            #expect(try await relay.child.waitForExit() == 0)
            #expect(relay.child.stderr.contains("relay stopped"))
            // The member learns why: exit 4 with the relay's reason.
            #expect(try await member.waitForExit() == 4)
            #expect(member.stderr.contains("relay shutting down"), "stderr: \(member.stderr)")
        }
    }

    @Test("serve and subscribe leave gracefully on SIGTERM and SIGINT (exit 0)", arguments: [SIGTERM, SIGINT])
    func clientSignal(_ signo: Int32) async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let member = try await scope.serve(["echo", "--echo"], relay: relay)
            let subscriber = try scope.spawn(["subscribe", "news"] + relay.flag)
            try await subscriber.waitForStderr("ready")
            member.send(signo)
            subscriber.send(signo)
            #expect(try await member.waitForExit() == 0, "\(member.stderr)")
            #expect(try await subscriber.waitForExit() == 0, "\(subscriber.stderr)")
            // The member is gone: its cluster has no members now.
            let result = try await scope.run(["request", "echo", "x", "--timeout", "200"] + relay.flag)
            #expect(result.status == 6, "no members: \(result.stderr)")
        }
    }
}

@Suite("signals right after ready", .timeLimit(.minutes(1)))
struct ReadySignalTests {
    /// `ready` promises the signal handling is in place: a signal sent the moment it appears
    /// must end the command gracefully (exit 0), never kill it (143) nor be lost (a hang).
    @Test("subscribe and serve exit 0 on SIGTERM sent as soon as they print ready")
    func signalRightAfterReady() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            for round in 0..<10 {
                let command = round % 2 == 0 ? ["subscribe", "t"] : ["serve", "c", "--echo"]
                let child = try scope.spawn(command + relay.flag)
                try await child.waitForStderr("ready", polling: .milliseconds(1))
                child.send(SIGTERM)
                let status = try await child.waitForExit(within: .seconds(5))
                #expect(status == 0, "round \(round): \(command[0]) exited \(status)")
            }
        }
    }
}

private func mode(of path: String) throws -> mode_t {
    var info = stat()
    guard stat(path, &info) == 0 else { throw HarnessError("stat \(path): \(String(cString: strerror(errno)))") }
    return info.st_mode & 0o777
}
