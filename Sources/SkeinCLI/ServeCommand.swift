import ArgumentParser
import Foundation
import NIOCore
import Skein

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a cluster: answer its requests, print its broadcasts, accept its tunnels.",
        discussion: """
            With --echo every request is answered with its own body and every tunnel echoes its messages. With `-- CMD ARGS…` each request runs CMD with the body on stdin; its stdout is the reply, and a non-zero exit is a fault carrying its stderr. Each tunnel runs CMD too, with the tunnel's messages on stdin and its stdout sent back through the tunnel. Prints `ready` to stderr once serving. SIGINT/SIGTERM leave the cluster gracefully.
            """)

    @OptionGroup var client: ClientOptions
    @Argument(help: "The cluster to serve.") var cluster: String
    @Flag(name: .long, help: "Answer every request with its body.") var echo = false
    @Flag(name: .long, help: "Print each broadcast to stdout, one per line.") var printBroadcasts = false
    @Option(name: .long, help: "Requests handled at once.") var concurrency = 16
    @Argument(parsing: .postTerminator, help: "The command to run for each request.") var command: [String] = []

    func validate() throws {
        try requireName(cluster, "cluster")
        guard echo != !command.isEmpty else {
            throw ValidationError("give exactly one of --echo or -- CMD ARGS…")
        }
        guard concurrency > 0 else { throw ValidationError("--concurrency must be positive") }
    }

    func run() async throws {
        var options = client.connectionOptions
        options.maxConcurrentHandlers = concurrency
        let handler: any ClusterHandler =
            echo
            ? EchoHandler(printBroadcasts: printBroadcasts)
            : CommandHandler(command: command, printBroadcasts: printBroadcasts)
        do {
            let connection = try await Skein.serve(cluster: cluster, to: client.endpoint, options: options, handler: handler)
            // The trap first: `ready` promises that SIGINT/SIGTERM now leave the cluster gracefully.
            let stop = SignalTrap.onInterrupt { Task { try? await connection.close() } }
            defer { stop.cancel() }
            printError("ready")
            let reason = await connection.waitUntilClosed()
            if !reason.isEmpty {
                throw SkeinError.connectionClosed(reason: reason)
            }
        } catch {
            throw ExitStatus.fail(error)
        }
    }
}

struct EchoHandler: ClusterHandler {
    let printBroadcasts: Bool

    func handleRequest(_ request: ServiceRequest) async throws -> ByteBuffer { request.body }

    func handleBroadcast(_ message: ByteBuffer) async {
        if printBroadcasts { printLine(message) }
    }

    func handleTunnel(_ tunnel: Tunnel) async {
        do {
            while let message = try await tunnel.receive() {
                try await tunnel.send(message)
            }
        } catch {}
    }
}

struct CommandHandler: ClusterHandler {
    let command: [String]
    let printBroadcasts: Bool

    func handleRequest(_ request: ServiceRequest) async throws -> ByteBuffer {
        let result = try await runProcess(command, input: request.body, timeout: request.timeout)
        guard result.status == 0 else {
            var stderr = result.stderr
            let text = stderr.readString(length: stderr.readableBytes) ?? ""
            let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
            throw SkeinFault(trimmed.isEmpty ? "\(command[0]) exited with status \(result.status)" : trimmed)
        }
        return result.stdout
    }

    func handleBroadcast(_ message: ByteBuffer) async {
        if printBroadcasts { printLine(message) }
    }

    /// The tunnel's messages go to the command's stdin; its stdout comes back as messages.
    func handleTunnel(_ tunnel: Tunnel) async {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        do { try process.run() } catch { return }
        let output = DescriptorReader(fd: stdout.fileHandleForReading.fileDescriptor)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    while let message = try await tunnel.receive() {
                        if !writeAll(stdin.fileHandleForWriting.fileDescriptor, message) { break }
                    }
                } catch {}
                try? stdin.fileHandleForWriting.close()
            }
            group.addTask {
                for await chunk in output {
                    do { try await tunnel.send(chunk) } catch { break }
                }
                // The command closed its stdout (it exited, typically): nothing more can come
                // back, so close the tunnel, which also ends the loop above. Without this a
                // command that exits early (`head -c 5`, `echo bye`) left the tunnel open
                // until the client closed it.
                try? await tunnel.close()
            }
            await group.waitForAll()
        }
        process.waitUntilExit()
    }
}

func printLine(_ message: ByteBuffer) {
    var line = message
    line.writeString("\n")
    writeStdout(line)
}

struct ProcessResult {
    var status: Int32
    var stdout: ByteBuffer
    var stderr: ByteBuffer
}

/// Runs a command with `input` on stdin, collecting stdout and stderr; kills it at `timeout`.
func runProcess(_ command: [String], input: ByteBuffer, timeout: Duration) async throws -> ProcessResult {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = command
            let stdin = Pipe()
            let stdout = Pipe()
            let stderr = Pipe()
            process.standardInput = stdin
            process.standardOutput = stdout
            process.standardError = stderr
            // Dispatch's worker threads block nearly every signal, and a process spawned from one
            // inherits that mask: the command then never saw SIGTERM, not even from the killer below
            // at the request's timeout, and outlived it. Spawn it with no signal blocked.
            var unblocked = sigset_t()
            var previous = sigset_t()
            sigemptyset(&unblocked)
            pthread_sigmask(SIG_SETMASK, &unblocked, &previous)
            do {
                try process.run()
                pthread_sigmask(SIG_SETMASK, &previous, nil)
            } catch {
                pthread_sigmask(SIG_SETMASK, &previous, nil)
                continuation.resume(throwing: SkeinFault("cannot run \(command[0]): \(error)"))
                return
            }
            let killer = DispatchWorkItem { process.terminate() }
            DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(timeout.wholeMillis)), execute: killer)
            // stdout and stderr are drained on threads of their own while the body is written:
            // a command that answers as it reads (`cat`) fills its stdout pipe long before a large
            // body is written, and would otherwise block forever, and this thread with it.
            let outReader = PipeCollector(stdout.fileHandleForReading)
            let errReader = PipeCollector(stderr.fileHandleForReading)
            signal(SIGPIPE, SIG_IGN)
            _ = writeAll(stdin.fileHandleForWriting.fileDescriptor, input)
            try? stdin.fileHandleForWriting.close()
            let out = outReader.wait()
            let err = errReader.wait()
            process.waitUntilExit()
            killer.cancel()
            continuation.resume(
                returning: ProcessResult(status: process.terminationStatus, stdout: ByteBuffer(bytes: out), stderr: ByteBuffer(bytes: err)))
        }
    }
}

extension Duration {
    var wholeMillis: Int64 {
        let (seconds, attoseconds) = components
        return max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }
}

/// Reads a pipe to its end on a thread of its own.
final class PipeCollector: @unchecked Sendable {
    // @unchecked: `data` is written by the reader thread before `done` is signalled, read after.
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ handle: FileHandle) {
        DispatchQueue.global().async {
            self.data = handle.readDataToEndOfFile()
            self.done.signal()
        }
    }

    func wait() -> Data {
        done.wait()
        return data
    }
}
