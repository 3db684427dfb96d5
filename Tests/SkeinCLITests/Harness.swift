// End-to-end harness: runs the built `skein` binary as child processes (Foundation `Process`)
// against a real `skein relay --dev` on 127.0.0.1, and cleans every one of them up.
//
// Children write stdout and stderr to files in a per-test directory, so a test reads what a
// child printed at any moment without pipes, and nothing depends on end-of-file. Every wait
// polls a condition against a deadline; a missed deadline fails with the child's stderr.

import Foundation
import SkeinTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Finding the binary

enum SkeinBinary {
    /// The `skein` executable under test, or an error saying where it was looked for.
    static func url() throws -> URL {
        let fileManager = FileManager.default
        // An explicit choice is used as is, never silently replaced by another build.
        if let path = ProcessInfo.processInfo.environment["SKEIN_BINARY"], !path.isEmpty {
            guard fileManager.isExecutableFile(atPath: path) else {
                throw HarnessError("SKEIN_BINARY=\(path) is not an executable file")
            }
            return URL(fileURLWithPath: path)
        }
        if let found = candidates.first(where: { fileManager.isExecutableFile(atPath: $0.path) }) {
            return found
        }
        throw HarnessError(
            """
            the skein binary was not found; looked at:
            \(candidates.map { "  \($0.path)" }.joined(separator: "\n"))
            Build it first (`swift build --product skein`, or `swift build --build-tests`), \
            or point SKEIN_BINARY at it.
            """)
    }

    static let candidates: [URL] = {
        var list: [URL] = []
        // `swift build`/`swift test` put the test bundle and `skein` in one directory.
        if let runner = Bundle.main.executableURL {
            list.append(runner.deletingLastPathComponent().appendingPathComponent("skein"))
        }
        if let first = CommandLine.arguments.first {
            list.append(URL(fileURLWithPath: first).deletingLastPathComponent().appendingPathComponent("skein"))
        }
        // The package's own debug build: #filePath is <root>/Tests/SkeinCLITests/Harness.swift.
        let root = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        list.append(root.appendingPathComponent(".build/debug/skein"))
        var seen = Set<String>()
        return list.filter { seen.insert($0.standardizedFileURL.path).inserted }
    }()
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Child processes

/// Where a child's standard input comes from.
enum Input {
    /// /dev/null: the command sees end of input at once.
    case none
    /// These bytes, then end of input.
    case bytes(Data)
    /// A file.
    case file(URL)
    /// A pipe the test holds: input ends only when the test closes its writing end.
    case pipe(Pipe)
}

/// One running `skein` process.
final class Child: @unchecked Sendable {
    // @unchecked: every stored property is a constant; Process is thread-safe for the calls used.
    let name: String
    let process: Process
    let stdoutURL: URL
    let stderrURL: URL
    let arguments: [String]

    init(name: String, process: Process, arguments: [String], stdoutURL: URL, stderrURL: URL) {
        self.name = name
        self.process = process
        self.arguments = arguments
        self.stdoutURL = stdoutURL
        self.stderrURL = stderrURL
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// Everything the child has written to stdout so far (empty if stdout is not a file).
    var stdout: Data { (try? Data(contentsOf: stdoutURL)) ?? Data() }
    var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    /// Everything the child has written to stderr so far.
    var stderr: String { String(decoding: (try? Data(contentsOf: stderrURL)) ?? Data(), as: UTF8.self) }

    /// Sends `signo` to this child only, and only while it has not been reaped (so the pid
    /// cannot have been reused by another process).
    func send(_ signo: Int32) {
        if process.isRunning { kill(process.processIdentifier, signo) }
    }

    /// Waits for the child to exit; its status, or 128+N when killed by signal N, as shells report.
    @discardableResult
    func waitForExit(within limit: Duration = .seconds(10)) async throws -> Int32 {
        try await waitUntil(within: limit, "\(name) to exit") { !self.process.isRunning }
        switch process.terminationReason {
        case .exit: return process.terminationStatus
        case .uncaughtSignal: return 128 + process.terminationStatus
        @unknown default: return process.terminationStatus
        }
    }

    /// Waits until the child's stderr contains `text`; fails early if the child exits first.
    func waitForStderr(_ text: String, within limit: Duration = .seconds(10), polling: Duration = .milliseconds(10)) async throws {
        try await waitUntil(within: limit, polling: polling, "\(text.debugDescription) on the stderr of \(name)") {
            if self.stderr.contains(text) { return true }
            if !self.process.isRunning, !self.stderr.contains(text) {
                throw HarnessError("\(self.name) exited (status \(self.process.terminationStatus)) before printing \(text.debugDescription)\n\(self.report)")
            }
            return false
        }
    }

    /// Waits until the child's stdout satisfies `condition`.
    func waitForStdout(
        _ what: String, within limit: Duration = .seconds(10), _ condition: @escaping @Sendable (Data) -> Bool
    ) async throws {
        try await waitUntil(within: limit, "\(what) on the stdout of \(name)") { condition(self.stdout) }
    }

    /// What to show when a test involving this child fails.
    var report: String {
        let out = stdout.count > 2000 ? "<\(stdout.count) bytes>" : stdoutText
        return """
            --- \(name): skein \(arguments.joined(separator: " ")) (pid \(pid), \(process.isRunning ? "running" : "exited \(process.terminationStatus)"))
            stdout: \(out)
            stderr: \(stderr)
            """
    }

    private func waitUntil(
        within limit: Duration, polling: Duration = .milliseconds(10), _ what: String,
        _ condition: @escaping @Sendable () throws -> Bool
    ) async throws {
        do {
            try await SkeinTestSupport.waitUntil(within: limit, polling: polling, what) { try condition() }
        } catch let timedOut as TimedOut {
            throw HarnessError("\(timedOut)\n\(report)")
        }
    }
}

/// The result of a command run to completion.
struct Outcome {
    var status: Int32
    var stdout: Data
    var stderr: String
    var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
}

// MARK: - Scope: a test's processes and files

/// Owns every process a test starts and a scratch directory; `withScope` kills the processes
/// (SIGKILL, by pid, only those still unreaped) and removes the directory however the test ends.
final class Scope: @unchecked Sendable {
    // @unchecked: `children` is guarded by `lock`.
    let directory: URL
    private let binary: URL
    private let lock = NSLock()
    private var children: [Child] = []
    private var counter = 0

    init() throws {
        binary = try SkeinBinary.url()
        // Short, so a Unix socket path inside it stays under the 108-byte limit.
        directory = URL(fileURLWithPath: "/tmp").appendingPathComponent("skein-cli-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    /// A fresh path inside the scratch directory.
    func path(_ name: String) -> URL { directory.appendingPathComponent(name) }

    /// Starts `skein ARGS…` in the background; with `namespace`, inside that network namespace
    /// (`ip netns exec`, which execs the binary: the child's pid is skein's own).
    /// `stdout`: a Pipe or FileHandle to use instead of the child's stdout file.
    func spawn(_ arguments: [String], name: String? = nil, stdin: Input = .none, stdout: Any? = nil, namespace: String? = nil) throws -> Child {
        let index = lock.withLock { () -> Int in
            counter += 1
            return counter
        }
        let label = name ?? arguments.first ?? "skein"
        let base = "\(index)-\(label)"
        let outURL = path("\(base).out")
        let errURL = path("\(base).err")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)

        let process = Process()
        if let namespace {
            process.executableURL = URL(fileURLWithPath: try NetworkNamespaces.ipTool())
            process.arguments = ["netns", "exec", namespace, binary.path] + arguments
        } else {
            process.executableURL = binary
            process.arguments = arguments
        }
        process.currentDirectoryURL = directory
        process.standardOutput = try stdout ?? FileHandle(forWritingTo: outURL) as Any
        process.standardError = try FileHandle(forWritingTo: errURL)
        switch stdin {
        case .none:
            process.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        case .bytes(let data):
            let inURL = path("\(base).in")
            try data.write(to: inURL)
            process.standardInput = try FileHandle(forReadingFrom: inURL)
        case .file(let url):
            process.standardInput = try FileHandle(forReadingFrom: url)
        case .pipe(let pipe):
            process.standardInput = pipe
        }
        let child = Child(name: base, process: process, arguments: arguments, stdoutURL: outURL, stderrURL: errURL)
        lock.withLock { children.append(child) }
        try process.run()
        return child
    }

    /// Runs `skein ARGS…` to completion (killing it after `limit`).
    func run(_ arguments: [String], stdin: Input = .none, within limit: Duration = .seconds(10), namespace: String? = nil) async throws -> Outcome {
        let child = try spawn(arguments, stdin: stdin, namespace: namespace)
        let status = try await child.waitForExit(within: limit)
        return Outcome(status: status, stdout: child.stdout, stderr: child.stderr)
    }

    /// Starts `skein relay --dev` on a port of its own and waits until it is ready.
    func startRelay(_ extra: [String] = []) async throws -> Relay {
        let child = try spawn(["relay", "--dev", "--client-port", "0", "--admin-port", "0"] + extra, name: "relay")
        try await child.waitForStderr("relay ready")
        // "… address=127.0.0.1:41031 [SkeinRelay] listening for clients"
        let marker = "address=127.0.0.1:"
        guard let range = child.stderr.range(of: marker),
            let port = Int(child.stderr[range.upperBound...].prefix(while: \.isNumber))
        else {
            throw HarnessError("cannot find the relay's port in its log\n\(child.report)")
        }
        // "… address=http://127.0.0.1:41032/ [SkeinRelay] admin endpoint listening"
        let adminMarker = "address=http://127.0.0.1:"
        let adminPort = child.stderr.range(of: adminMarker).flatMap {
            Int(child.stderr[$0.upperBound...].prefix(while: \.isNumber))
        }
        return Relay(child: child, port: port, adminPort: adminPort)
    }

    /// Starts `skein serve ARGS…` against `relay` and waits for its `ready`.
    func serve(_ arguments: [String], relay: Relay) async throws -> Child {
        let child = try spawn(["serve"] + relay.flag + arguments, name: "serve-\(arguments.first ?? "")")
        try await child.waitForStderr("ready")
        return child
    }

    /// Everything the children printed, for a failure message.
    var report: String { lock.withLock { children }.map(\.report).joined(separator: "\n") }

    func cleanUp() {
        for child in lock.withLock({ children }) {
            child.send(SIGKILL)
        }
        try? FileManager.default.removeItem(at: directory)
    }
}

/// A running dev relay.
struct Relay {
    let child: Child
    let port: Int
    /// The admin endpoint's port, if the relay serves one.
    var adminPort: Int?
    var address: String { "127.0.0.1:\(port)" }
    var flag: [String] { ["--relay", address] }
}

/// Runs `body` with a fresh scope, and always cleans it up. On failure the error carries what
/// every child printed.
func withScope<T>(_ body: (Scope) async throws -> T) async throws -> T {
    let scope = try Scope()
    defer { scope.cleanUp() }
    do {
        return try await body(scope)
    } catch {
        throw HarnessError("\(error)\n\(scope.report)")
    }
}

// MARK: - Small helpers

/// A TCP port on 127.0.0.1 where nothing listens: bound to find a free one, then released.
func unusedPort() throws -> Int {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { throw HarnessError("socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
            bind(fd, sockaddrPointer, length) == 0 && getsockname(fd, sockaddrPointer, &length) == 0
        }
    }
    guard bound else { throw HarnessError("bind: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// `count` random bytes.
func randomBytes(_ count: Int) -> Data {
    var generator = SystemRandomNumberGenerator()
    var data = Data(count: count)
    data.withUnsafeMutableBytes { raw in
        let words = raw.bindMemory(to: UInt64.self)
        for i in words.indices { words[i] = generator.next() }
        for i in (words.count * 8)..<count { raw[i] = UInt8.random(in: 0...255, using: &generator) }
    }
    return data
}

/// Whether two byte strings are equal. Use it in `#expect` instead of `==` on large `Data`:
/// on failure Swift Testing diffs the operands of `==`, which takes minutes for a megabyte.
func identical(_ a: Data, _ b: Data) -> Bool { a == b }

extension Data {
    var text: String { String(decoding: self, as: UTF8.self) }
}

// MARK: - Text output

/// The cells of one line of `skein status`/`skein members` text: columns are two or more spaces apart.
func cells(_ line: some StringProtocol) -> [String] {
    line.trimmingCharacters(in: .whitespaces).components(separatedBy: "  ")
        .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
}

/// Lines of text output, empty lines kept.
func lines(_ text: String) -> [String] {
    text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
}
