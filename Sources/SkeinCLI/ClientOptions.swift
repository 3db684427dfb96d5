import ArgumentParser
import Foundation
import NIOCore
import Skein

/// How a client command finds its relay.
struct ClientOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The relay's client address.", valueName: "host:port"))
    var relay: String?

    @Option(name: .long, help: ArgumentHelp("The relay's Unix socket (instead of --relay).", valueName: "path"))
    var socket: String?

    func validate() throws {
        if relay != nil && socket != nil {
            throw ValidationError("give either --relay or --socket, not both")
        }
        if let relay, RelayEndpoint(relay) == nil {
            throw ValidationError("--relay must be HOST:PORT, [IPV6]:PORT or PORT, not \(relay.debugDescription)")
        }
    }

    var endpoint: RelayEndpoint {
        if let socket { return .unixSocket(path: socket) }
        if let relay, let endpoint = RelayEndpoint(relay) { return endpoint }
        return .default
    }

    func connect() async throws -> SkeinConnection {
        try await Skein.connect(to: endpoint)
    }
}

/// Exit codes a shell script can rely on (also in `skein --help`).
enum ExitStatus {
    static let fault: Int32 = 1
    static let timedOut: Int32 = 3
    static let unavailable: Int32 = 4
    static let protocolViolation: Int32 = 5
    static let internalError: Int32 = 70
    /// Standard output was closed under us (what a shell reports for death by SIGPIPE).
    static let stdoutClosed: Int32 = 141

    /// Prints `error` to stderr as `skein: …` and maps it to an exit code.
    static func fail(_ error: any Error) -> ExitCode {
        let code: Int32
        switch error {
        case let error as SkeinError:
            switch error {
            case .remoteFault: code = fault
            case .timedOut: code = timedOut
            case .connectionClosed, .cannotConnect, .denied, .tunnelClosed: code = unavailable
            case .protocolViolation: code = protocolViolation
            case .alreadySubscribed, .messageTooLarge, .invalidName: code = internalError
            }
        default:
            code = internalError
        }
        printError("\(error)")
        return ExitCode(code)
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data("skein: \(message)\n".utf8))
}

/// The message of a command: its argument, or standard input when absent or `-`.
func messageBody(_ argument: String?) -> ByteBuffer {
    if let argument, argument != "-" {
        return ByteBuffer(string: argument)
    }
    let data = FileHandle.standardInput.readDataToEndOfFile()
    return ByteBuffer(bytes: data)
}

/// Writes bytes to standard output unbuffered. When standard output is gone (the reader of
/// the pipe exited), exits at once with 141, as death by SIGPIPE would: SwiftNIO ignores
/// SIGPIPE process-wide, so without this `skein subscribe TOPIC | head -1` would never end.
func writeStdout(_ buffer: ByteBuffer) {
    if !writeAll(1, buffer) {
        _exit(ExitStatus.stdoutClosed)
    }
}

/// Refuses an empty cluster or topic name (the binding traps on an empty cluster to serve).
func requireName(_ name: String, _ what: String) throws {
    if name.isEmpty { throw ValidationError("the \(what) name must not be empty") }
}

/// Parses a millisecond duration option.
func milliseconds(_ value: Int, _ name: String) throws -> Duration {
    guard value >= 0 else { throw ValidationError("\(name) must not be negative") }
    return .milliseconds(value)
}
