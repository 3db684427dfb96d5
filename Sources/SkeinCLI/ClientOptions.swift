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

    @Option(
        name: .long,
        help: ArgumentHelp(
            "auto (the newest the relay speaks), skein/2 (wildcard subscriptions), skein/1 (distinct, early failures such as no members), or v1.0-draft2 (the Iris protocol: a request to a cluster without members waits for one until its timeout).",
            valueName: "version"))
    var `protocol` = "auto"

    func validate() throws {
        if relay != nil && socket != nil {
            throw ValidationError("give either --relay or --socket, not both")
        }
        guard protocolChoice != nil else {
            throw ValidationError("--protocol must be auto, skein/2, skein/1 or v1.0-draft2, not \(`protocol`.debugDescription)")
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

    var protocolChoice: ProtocolChoice? {
        switch `protocol` {
        case "auto": .automatic
        case "skein/2": .skein2
        case "skein/1": .skein1
        case "v1.0-draft2", "iris": .irisDraft2
        default: nil
        }
    }

    /// Connection options with the chosen protocol.
    var connectionOptions: ConnectionOptions {
        var options = ConnectionOptions()
        options.protocolVersion = protocolChoice ?? .automatic
        return options
    }

    func connect() async throws -> SkeinConnection {
        try await Skein.connect(to: endpoint, options: connectionOptions)
    }
}

/// Exit codes a shell script can rely on (also in `skein --help`).
enum ExitStatus {
    static let fault: Int32 = 1
    static let timedOut: Int32 = 3
    static let unavailable: Int32 = 4
    static let protocolViolation: Int32 = 5
    /// `skein/1`'s distinct failures (Docs/skein-1.md).
    static let noMembers: Int32 = 6
    static let memberLost: Int32 = 7
    static let networkUnreachable: Int32 = 8
    static let notExported: Int32 = 9
    static let internalError: Int32 = 70
    /// Standard output was closed under us (what a shell reports for death by SIGPIPE).
    static let stdoutClosed: Int32 = 141

    /// Prints `error` to stderr as `skein: …` and maps it to an exit code.
    static func fail(_ error: any Error) -> ExitCode {
        let code: Int32
        switch error {
        case let error as SkeinError:
            // `SkeinError.Code` can grow in any release: a code this table does not know yet is
            // an unavailable relay or mesh, as an unknown `skein/1` failure reason is.
            switch error.code {
            case .remoteFault: code = fault
            case .timedOut: code = timedOut
            case .connectionClosed, .cannotConnect, .denied, .tunnelClosed: code = unavailable
            case .protocolViolation: code = protocolViolation
            case .alreadySubscribed, .messageTooLarge, .invalidName: code = internalError
            case .noMembers: code = noMembers
            case .memberLost: code = memberLost
            case .networkUnreachable: code = networkUnreachable
            case .notExported: code = notExported
            case .relayFailure: code = unavailable
            default: code = unavailable
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
