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
        abstract: "Show the local relay's state: network, keys, clients, peer links.",
        discussion: "Reads GET /status from the relay's admin endpoint and prints it as JSON (Docs/operations.md).")

    @OptionGroup var admin: AdminOptions

    func run() async throws {
        let body = try await admin.get("/status")
        FileHandle.standardOutput.write(Data(body))
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
            For a relay already running with --bind: it contacts the seeds (any one alive is
            enough) and merges their view of the mesh, as --seed does at start. Sends POST /join
            to the relay's admin endpoint.
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
            Reads GET /members from the relay's admin endpoint. Statuses: alive, suspect, dead,
            left. With --json, prints the endpoint's JSON as is (its shape is in
            Docs/operations.md and stable within a major version).
            """)

    @OptionGroup var admin: AdminOptions

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    func run() async throws {
        let body = try await admin.get("/members")
        if json {
            FileHandle.standardOutput.write(Data(body))
            return
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
            let members = object["members"] as? [[String: Any]]
        else {
            printError("the relay's /members answer is not the expected JSON")
            throw ExitCode(ExitStatus.internalError)
        }
        var rows = [["NAME", "NODE", "ADDRESS", "STATUS", "INC", "ZONE", "CLUSTERS", "GATEWAY TO"]]
        for m in members {
            let clusters = (m["clusters"] as? [String: Any])?.keys.sorted().joined(separator: ",") ?? "?"
            let gateways = (m["gateways"] as? [String: Any])?.keys.sorted().joined(separator: ",") ?? "?"
            let name = (m["name"] as? String ?? "") + ((m["self"] as? Bool) == true ? " *" : "")
            rows.append([
                name, String((m["node"] as? String ?? "").prefix(12)), m["address"] as? String ?? "",
                m["status"] as? String ?? "", "\(m["incarnation"] as? Int ?? 0)",
                (m["zone"] as? String).map { $0.isEmpty ? "-" : $0 } ?? "?", clusters.isEmpty ? "-" : clusters,
                gateways.isEmpty ? "-" : gateways,
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            let line = zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
            print(line.trimmingCharacters(in: .whitespaces))
        }
    }
}
