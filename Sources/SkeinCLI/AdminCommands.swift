import ArgumentParser
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// Where the relay's admin endpoint is (`skein relay --admin-port`).
struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The relay's admin endpoint.", valueName: "host:port"))
    var admin = "127.0.0.1:55557"

    func get(_ path: String) async throws -> [UInt8] {
        try await call(path, method: .GET, body: [])
    }

    func post(_ path: String, body: [UInt8]) async throws -> [UInt8] {
        try await call(path, method: .POST, body: body)
    }

    private func call(_ path: String, method: HTTPMethod, body: [UInt8]) async throws -> [UInt8] {
        guard let colon = admin.lastIndex(of: ":"), let port = Int(admin[admin.index(after: colon)...]) else {
            throw ValidationError("--admin must be host:port")
        }
        var host = String(admin[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        do {
            return try await AdminClient.request(host: host, port: port, method: method, path: path, body: body)
        } catch {
            printError("cannot reach the relay's admin endpoint at \(admin): \(error) (is `skein relay` running, and with which --admin-port?)")
            throw ExitCode(ExitStatus.unavailable)
        }
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the local relay's state: network, keys, clients, peer links, federations.",
        discussion: """
            Reads GET /status from the relay's admin endpoint and prints it as sections for people: the relay, its local clients, its mesh and peer links, and each federation with its gateway links. With --json, prints the endpoint's JSON as is (one line; its shape is in Docs/operations.md and fields are only ever added within a major version).
            """)

    @OptionGroup var admin: AdminOptions

    @Flag(name: .long, help: "Print the endpoint's JSON instead of text.")
    var json = false

    func run() async throws {
        try await printAdminAnswer("/status", from: admin, json: json, render: AdminText.status)
    }
}

/// A minimal HTTP/1.1 GET over NIO: enough for the relay's own admin endpoint.
enum AdminClient {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static func request(host: String, port: Int, method: HTTPMethod, path: String, body: [UInt8]) async throws -> [UInt8] {
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: [UInt8].self)
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(5))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(Collector(promise: promise))
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            promise.fail(error)  // a promise must be completed even when nothing will wait on it
            throw error
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "\(host):\(port)")
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Content-Length", value: String(body.count))
        channel.write(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)), promise: nil)
        if !body.isEmpty { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        let timeout = channel.eventLoop.scheduleTask(in: .seconds(10)) {
            promise.fail(Failure(description: "no answer within 10 s"))
        }
        defer {
            timeout.cancel()
            channel.close(promise: nil)
        }
        return try await promise.futureResult.get()
    }

    private final class Collector: ChannelInboundHandler, @unchecked Sendable {
        // @unchecked: confined to its channel's event loop.
        typealias InboundIn = HTTPClientResponsePart
        let promise: EventLoopPromise<[UInt8]>
        var status: HTTPResponseStatus = .ok
        var body: [UInt8] = []

        init(promise: EventLoopPromise<[UInt8]>) { self.promise = promise }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head): status = head.status
            case .body(let buffer): body += buffer.readableBytesView
            case .end:
                if status == .ok {
                    promise.succeed(body)
                } else {
                    promise.fail(Failure(description: "HTTP \(status.code): \(String(decoding: body, as: UTF8.self))"))
                }
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.fail(Failure(description: "the connection closed before a whole answer"))
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            promise.fail(error)
            context.close(promise: nil)
        }
    }
}

struct JoinCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "join",
        abstract: "Tell the local relay to join (more of) the mesh through these relays.",
        discussion: """
            For a relay already running with --bind: it contacts the seeds (any one alive is enough) and merges their view of the mesh, as --seed does at start. Sends POST /join to the relay's admin endpoint.
            """)

    @OptionGroup var admin: AdminOptions

    @Argument(help: ArgumentHelp("Relays to join through.", valueName: "host:port"))
    var seeds: [String]

    func validate() throws {
        guard !seeds.isEmpty else { throw ValidationError("give at least one host:port") }
    }

    func run() async throws {
        let body = try await admin.post("/join", body: Array(seeds.joined(separator: "\n").utf8))
        FileHandle.standardOutput.write(Data(body))
    }
}

struct MembersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "members",
        abstract: "List every relay the local relay knows: name, node id, address, status, clusters.",
        discussion: """
            Reads GET /members from the relay's admin endpoint and prints a table, one row per relay (`*` marks this one), then a summary line such as "5 members: 3 alive, 1 suspect, 1 dead". Statuses: alive, suspect, dead, left; suspect and dead rows are marked in upper case with a `!` (and in colour on a terminal, unless NO_COLOR is set). With --json, prints the endpoint's JSON as is (its shape is in Docs/operations.md and stable within a major version).
            """)

    @OptionGroup var admin: AdminOptions

    @Flag(name: .long, help: "Print the endpoint's JSON instead of a table.")
    var json = false

    func run() async throws {
        try await printAdminAnswer("/members", from: admin, json: json, render: AdminText.members)
    }
}

/// Prints an admin endpoint's answer: its JSON as is with `--json`, else rendered for people.
private func printAdminAnswer(
    _ path: String, from admin: AdminOptions, json: Bool, render: ([String: Any], TextStyle) -> String?
) async throws {
    let body = try await admin.get(path)
    if json {
        FileHandle.standardOutput.write(Data(body))
        return
    }
    guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
        let text = render(object, .standardOutput)
    else {
        printError("the relay's \(path) answer is not the expected JSON")
        throw ExitCode(ExitStatus.internalError)
    }
    FileHandle.standardOutput.write(Data(text.utf8))
}
