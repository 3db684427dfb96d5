import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// What the admin endpoint answers with.
public struct AdminResponse: Sendable {
    public var status: HTTPResponseStatus
    public var contentType: String
    public var body: [UInt8]

    public init(status: HTTPResponseStatus = .ok, contentType: String, body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }

    public static func json(_ value: JSON) -> AdminResponse {
        AdminResponse(contentType: "application/json", body: Array((value.serialized + "\n").utf8))
    }

    public static func text(_ text: String, status: HTTPResponseStatus = .ok) -> AdminResponse {
        AdminResponse(status: status, contentType: "text/plain; charset=utf-8", body: Array(text.utf8))
    }
}

/// A small HTTP/1.1 server on loopback for operators: `GET /status`, `/members`, `/metrics`
/// (Docs/operations.md). It only reads; nothing on it changes the relay.
public final class AdminServer: Sendable {
    /// A request the endpoint serves: GET (or HEAD) of a path, or POST with a small body.
    public struct Request: Sendable {
        public var method: HTTPMethod
        public var path: String
        public var body: [UInt8]
    }

    public typealias Route = @Sendable (_ request: Request) async -> AdminResponse?

    /// Largest POST body accepted.
    static let maxBody = 64 << 10

    private let channel: any Channel

    /// Binds `host:port` (port 0 picks one) and serves `route` until `close()`.
    public static func start(host: String, port: Int, group: any EventLoopGroup, logger: Logger, route: @escaping Route) async throws -> AdminServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(route: route))
                }
            }
            .bind(host: host, port: port).get()
        logger.info("admin endpoint listening", metadata: ["address": "http://\(host):\(channel.localAddress?.port ?? port)/"])
        return AdminServer(channel: channel)
    }

    private init(channel: any Channel) {
        self.channel = channel
    }

    public var port: Int? { channel.localAddress?.port }

    public func close() async {
        try? await channel.close()
    }
}

private final class AdminHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used on its channel's event loop only.
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let route: AdminServer.Route
    var head: HTTPRequestHead?
    var body: [UInt8] = []

    init(route: @escaping AdminServer.Route) {
        self.route = route
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = []
        case .body(let chunk):
            if body.count + chunk.readableBytes <= AdminServer.maxBody { body += chunk.readableBytesView }
        case .end:
            guard let head else { return }
            self.head = nil
            let request = AdminServer.Request(method: head.method, path: String(head.uri.split(separator: "?", maxSplits: 1).first ?? ""), body: body)
            let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
            let keepAlive = head.isKeepAlive
            let version = head.version
            let route = self.route
            let loop = context.eventLoop
            let bound = NIOLoopBound(context, eventLoop: loop)
            let handler = NIOLoopBound(self, eventLoop: loop)
            let promise = loop.makePromise(of: AdminResponse.self)
            if ![.GET, .HEAD, .POST].contains(head.method) {
                promise.succeed(.text("only GET and POST are supported\n", status: .methodNotAllowed))
            } else {
                promise.completeWithTask {
                    await route(request) ?? .text("not found: \(head.method) \(path)\nendpoints: GET /status /members /metrics, POST /join\n", status: .notFound)
                }
            }
            promise.futureResult.whenSuccess { response in
                handler.value.respond(response, version: version, keepAlive: keepAlive, headOnly: head.method == .HEAD, context: bound.value)
            }
        }
    }

    func respond(_ response: AdminResponse, version: HTTPVersion, keepAlive: Bool, headOnly: Bool, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: response.status, headers: headers))), promise: nil)
        if !headOnly {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
        }
        let done = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: done)
        if !keepAlive {
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            done.futureResult.whenComplete { _ in bound.value.close(promise: nil) }
        }
    }
}

/// A JSON value, serialized without Foundation (for the admin endpoint).
public indirect enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSON])
    /// Keys keep their order, so output is stable.
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool { a.serialized == b.serialized }

    public var serialized: String {
        var out = ""
        write(into: &out)
        return out
    }

    private func write(into out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d): out += d.isFinite ? String(d) : "null"
        case .string(let s): Self.quote(s, into: &out)
        case .array(let values):
            out += "["
            for (i, value) in values.enumerated() {
                if i > 0 { out += "," }
                value.write(into: &out)
            }
            out += "]"
        case .object(let fields):
            out += "{"
            for (i, (key, value)) in fields.enumerated() {
                if i > 0 { out += "," }
                Self.quote(key, into: &out)
                out += ":"
                value.write(into: &out)
            }
            out += "}"
        }
    }

    private static func quote(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
