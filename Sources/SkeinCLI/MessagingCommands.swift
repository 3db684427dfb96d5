import ArgumentParser
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Skein

/// `-H key=value`, repeatable: headers for a skein/2 message (Docs/skein-2.md).
struct HeaderOptions: ParsableArguments {
    @Option(
        name: [.customShort("H"), .customLong("header")],
        help: ArgumentHelp("A header to send (skein/2), repeatable: `-H key=value`. An older relay gets the body without them.", valueName: "key=value"))
    var header: [String] = []

    func validate() throws { _ = try headers() }

    func headers() throws -> Headers {
        var headers = Headers()
        for text in header {
            guard let equals = text.firstIndex(of: "="), equals != text.startIndex else {
                throw ValidationError("-H must be key=value with a key, not \(text.debugDescription)")
            }
            headers.add(String(text[..<equals]), String(text[text.index(after: equals)...]))
        }
        return headers
    }
}

struct RequestCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "request",
        abstract: "Send a request to one member of a cluster and print its reply.",
        discussion: """
            The reply body goes to stdout as is; on a terminal a newline follows a reply that does not end in one, so the prompt starts on a line of its own (piped or redirected, the bytes are exact). A fault goes to stderr (exit 1); a timeout exits 3. With --headers, the reply's headers go to stderr first, one `key: value` per line.
            """)

    @OptionGroup var client: ClientOptions
    @OptionGroup var headerOptions: HeaderOptions
    @Flag(name: .customLong("headers"), help: "Print the reply's headers (skein/2) to stderr.") var printHeaders = false
    @Argument(help: "The cluster to ask.") var cluster: String
    @Argument(help: "The request body; read from stdin when absent or '-'.") var data: String?
    @Option(name: .long, help: ArgumentHelp("How long the relay waits for an answer, in milliseconds.", valueName: "ms"))
    var timeout = 5000

    func validate() throws { try requireName(cluster, "cluster") }

    func run() async throws {
        let timeout = try milliseconds(self.timeout, "--timeout")
        let body = messageBody(data)
        do {
            let connection = try await client.connect()
            let reply: ByteBuffer
            do {
                let answer = try await connection.request(cluster: cluster, body, headers: try headerOptions.headers(), timeout: timeout)
                reply = answer.body
                if printHeaders { for (key, value) in answer.headers { printError("\(key): \(value)") } }
            } catch {
                try? await connection.close()
                throw error
            }
            try? await connection.close()
            writeStdout(reply)
            // For people at a terminal only: a pipe or file gets the reply's bytes exactly.
            if isatty(STDOUT_FILENO) == 1, reply.readableBytes > 0, reply.getInteger(at: reply.writerIndex - 1, as: UInt8.self) != UInt8(ascii: "\n") {
                writeStdout(ByteBuffer(string: "\n"))
            }
        } catch {
            throw ExitStatus.fail(error)
        }
    }
}

struct BroadcastCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "broadcast", abstract: "Send a message to every member of a cluster.")

    @OptionGroup var client: ClientOptions
    @OptionGroup var headerOptions: HeaderOptions
    @Argument(help: "The cluster.") var cluster: String
    @Argument(help: "The message; read from stdin when absent or '-'.") var data: String?

    func validate() throws { try requireName(cluster, "cluster") }

    func run() async throws {
        let body = messageBody(data)
        do {
            let connection = try await client.connect()
            try await connection.broadcast(cluster: cluster, body, headers: try headerOptions.headers())
            try await connection.close()
        } catch {
            throw ExitStatus.fail(error)
        }
    }
}

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish", abstract: "Publish an event to every subscriber of a topic.")

    @OptionGroup var client: ClientOptions
    @OptionGroup var headerOptions: HeaderOptions
    @Argument(help: "The topic.") var topic: String
    @Argument(help: "The event; read from stdin when absent or '-'.") var data: String?

    func validate() throws { try requireName(topic, "topic") }

    func run() async throws {
        let body = messageBody(data)
        do {
            // A refusal (a wildcard topic, a name@network not exported or unreachable) comes
            // before the relay's answer to CLOSE: it fails the command.
            let refusal = NIOLockedValueBox<Refusal?>(nil)
            var options = client.connectionOptions
            options.onRefused = { refused in refusal.withLockedValue { $0 = $0 ?? refused } }
            let connection = try await Skein.connect(to: client.endpoint, options: options)
            try await connection.publish(topic: topic, body, headers: try headerOptions.headers())
            try await connection.close()
            if let refused = refusal.withLockedValue({ $0 }) { throw refused.error }
        } catch {
            throw ExitStatus.fail(error)
        }
    }
}

struct SubscribeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscribe",
        abstract: "Print a topic's events, one per line, until interrupted.",
        discussion: """
            Prints `ready` to stderr once subscribed, so scripts can wait for it. With skein/2 (the \
            default against a Skein relay) the topic may be a pattern: `*` stands for one token and a \
            last `>` for one or more, tokens separated by `.` (`orders.*.paid`, `metrics.>`).
            """)

    @OptionGroup var client: ClientOptions
    @Argument(help: "The topic, or a pattern (skein/2).") var topic: String
    @Option(name: .long, help: "Exit after this many events.") var count: Int?
    @Flag(name: .long, help: "Do not add a newline after each event.") var raw = false
    @Flag(name: .long, help: "Print each event's topic and a tab before it (for patterns).") var withTopic = false
    @Flag(name: .long, help: "Print each event's headers (skein/2), as [key: value, …] and a tab, before it.") var headers = false

    func validate() throws {
        try requireName(topic, "topic")
        if let count, count <= 0 { throw ValidationError("--count must be positive") }
    }

    func run() async throws {
        do {
            let connection = try await client.connect()
            let subscription = try await connection.subscribe(topic: topic)
            // The trap first: `ready` promises that SIGINT/SIGTERM now end the command gracefully.
            let stop = SignalTrap.onInterrupt { Task { try? await connection.close() } }
            defer { stop.cancel() }
            printError("ready")
            var received = 0
            for try await event in subscription.events {
                if withTopic { writeStdout(ByteBuffer(string: event.topic + "\t")) }
                if headers { writeStdout(ByteBuffer(string: "\(event.headers)\t")) }
                writeStdout(event.body)
                if !raw { writeStdout(ByteBuffer(string: "\n")) }
                received += 1
                if let count, received >= count { break }
            }
            try? await connection.close()
        } catch let error as SkeinError {
            if error.code == .connectionClosed, error.detail.isEmpty { return }
            throw ExitStatus.fail(error)
        }
    }
}

struct SurveyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "survey",
        abstract: "Ask every member of a cluster, on every relay, and print each answer as it comes (skein/2).",
        discussion: """
            Each reply goes to stdout, one per line (with --headers, its headers as [key: value, …] and a tab first); each fault goes to stderr as `fault: TEXT`. When the survey ends (every member answered or went away, or the timeout), the counts go to stderr: `asked N, answered N, faulted N, lost N`. With --json, stdout has one JSON object per line instead: {"reply": TEXT, "headers": {…}} or {"fault": TEXT} per answer, then {"asked": N, "answered": N, "faulted": N, "lost": N}.

            Exits 0 when the survey ends, whatever its counts. If it could not be made: 8 (no gateway to the other network is reachable), 9 (not exported), 4 (the relay is older than skein/2, or unreachable).
            """)

    @OptionGroup var client: ClientOptions
    @OptionGroup var headerOptions: HeaderOptions
    @Flag(name: .customLong("headers"), help: "Print each reply's headers (skein/2) before it.") var printHeaders = false
    @Flag(name: .long, help: "Print JSON lines for machines instead.") var json = false
    @Argument(help: "The cluster to ask.") var cluster: String
    @Argument(help: "The survey body; read from stdin when absent or '-'.") var data: String?
    @Option(name: .long, help: ArgumentHelp("How long the relay waits for answers, in milliseconds.", valueName: "ms"))
    var timeout = 1000

    func validate() throws { try requireName(cluster, "cluster") }

    func run() async throws {
        let timeout = try milliseconds(self.timeout, "--timeout")
        let body = messageBody(data)
        do {
            let connection = try await client.connect()
            let survey: Survey
            do {
                survey = try await connection.survey(cluster: cluster, body, headers: try headerOptions.headers(), timeout: timeout)
                try await printAnswers(of: survey)
            } catch {
                try? await connection.close()
                throw error
            }
            try? await connection.close()
            guard let tally = survey.tally else { return }
            if json {
                writeJSONLine(["asked": tally.asked, "answered": tally.answered, "faulted": tally.faulted, "lost": tally.lost])
            } else {
                printError("\(tally)")
            }
        } catch {
            throw ExitStatus.fail(error)
        }
    }

    private func printAnswers(of survey: Survey) async throws {
        for try await answer in survey {
            switch answer {
            case .reply(let message):
                if json {
                    var object: [String: Any] = ["reply": String(buffer: message.body)]
                    if !message.headers.isEmpty {
                        object["headers"] = Dictionary(message.headers.map { ($0.0, $0.1) }, uniquingKeysWith: { first, _ in first })
                    }
                    writeJSONLine(object)
                } else {
                    if printHeaders { writeStdout(ByteBuffer(string: "\(message.headers)\t")) }
                    writeStdout(message.body)
                    writeStdout(ByteBuffer(string: "\n"))
                }
            case .fault(let fault):
                if json { writeJSONLine(["fault": fault]) } else { printError("fault: \(fault)") }
            }
        }
    }

    private func writeJSONLine(_ object: [String: Any]) {
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        data.append(UInt8(ascii: "\n"))
        writeStdout(ByteBuffer(bytes: data))
    }
}
