import NIOCore
import NIOPosix
import SkeinWire

/// A raw TCP connection to a relay for byte-level tests: writes exact bytes and waits, with a
/// deadline, for exact bytes, a decoded frame, or the end of the connection.
final class WireClient: Sendable {
    let channel: any Channel
    private let collector: Collector
    let name: String

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func connect(port: Int, name: String = "client") async throws -> WireClient {
        let collector = Collector()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        return WireClient(channel: channel, collector: collector, name: name)
    }

    private init(channel: any Channel, collector: Collector, name: String) {
        self.channel = channel
        self.collector = collector
        self.name = name
    }

    func write(_ hex: String) async throws {
        try await write(ByteBuffer(hex: hex))
    }

    func write(_ bytes: ByteBuffer) async throws {
        try await channel.writeAndFlush(bytes)
    }

    func write(_ frame: ClientFrame) async throws {
        var bytes = ByteBuffer()
        frame.encode(into: &bytes)
        try await write(bytes)
    }

    /// Sends our half-close (EOF) while still reading.
    func shutdownOutput() async throws {
        try await channel.close(mode: .output)
    }

    func close() async {
        try? await channel.close()
    }

    /// Exactly the next `count` bytes.
    func read(_ count: Int, within timeout: TimeAmount = .seconds(5)) async throws -> ByteBuffer {
        try await wait(within: timeout, for: "\(count) bytes") { $0.received.readableBytes >= count }
        return try await channel.eventLoop.submit { [collector, name] in
            guard let bytes = collector.received.readSlice(length: count) else {
                throw Failure(description: "\(name): connection ended after \(collector.received.hex) while waiting for \(count) bytes")
            }
            return bytes
        }.get()
    }

    /// Reads as many bytes as `hex` holds; returns them as hex, to compare with `hex`.
    func read(hexLike hex: String, within timeout: TimeAmount = .seconds(5)) async throws -> String {
        try await read(hexBytes(hex).count, within: timeout).hex
    }

    /// The next complete frame from the relay.
    func readFrame(within timeout: TimeAmount = .seconds(5)) async throws -> RelayFrame {
        try await wait(within: timeout, for: "a frame") { collector in
            var copy = collector.received
            return (try? RelayFrame.decode(from: &copy, limits: WireLimits())) != nil
        }
        return try await channel.eventLoop.submit { [collector, name] in
            guard let frame = try RelayFrame.decode(from: &collector.received, limits: WireLimits()) else {
                throw Failure(description: "\(name): connection ended mid-frame: \(collector.received.hex)")
            }
            return frame
        }.get()
    }

    /// Waits for the relay to end the connection; returns the bytes not yet read.
    func readToEnd(within timeout: TimeAmount = .seconds(5)) async throws -> ByteBuffer {
        try await wait(within: timeout, for: "the connection to end") { $0.isClosed }
        return try await channel.eventLoop.submit { [collector] in
            defer { collector.received.clear() }
            return collector.received
        }.get()
    }

    var isClosed: Bool {
        get async { (try? await channel.eventLoop.submit { [collector] in collector.isClosed }.get()) ?? true }
    }

    /// Resolves when `condition` holds (checked on every read and at close) or fails at the deadline.
    /// A closed connection also ends the wait, so callers find out why instead of timing out.
    private func wait(within timeout: TimeAmount, for what: String, until condition: @escaping @Sendable (Collector) -> Bool) async throws {
        let eventLoop = channel.eventLoop
        let name = self.name
        try await eventLoop.flatSubmit { [collector] () -> EventLoopFuture<Void> in
            if condition(collector) || collector.isClosed { return eventLoop.makeSucceededVoidFuture() }
            let promise = eventLoop.makePromise(of: Void.self)
            let timer = eventLoop.scheduleTask(in: timeout) {
                collector.waiter = nil
                promise.fail(Failure(description: "\(name): timed out after \(timeout) waiting for \(what); buffered: [\(collector.received.hex)]"))
            }
            collector.waiter = { collector in
                guard condition(collector) || collector.isClosed else { return false }
                timer.cancel()
                promise.succeed()
                return true
            }
            return promise.futureResult
        }.get()
    }
}

/// Gathers everything the relay sends. Confined to the channel's event loop.
private final class Collector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    var received = ByteBuffer()
    var isClosed = false
    var waiter: ((Collector) -> Bool)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        received.writeBuffer(&bytes)
        notify()
    }

    func channelInactive(context: ChannelHandlerContext) {
        isClosed = true
        notify()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A reset ends the connection like an EOF does.
        context.close(promise: nil)
    }

    private func notify() {
        if let waiter, waiter(self) { self.waiter = nil }
    }
}

extension ByteBuffer {
    init(hex: String) {
        self.init(bytes: hexBytes(hex))
    }

    var hex: String {
        readableBytesView.map { byte in
            let s = String(byte, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined(separator: " ")
    }
}

func hexBytes(_ hex: String) -> [UInt8] {
    let digits = hex.unicodeScalars.filter { !$0.properties.isWhitespace }.map { Character($0) }
    precondition(digits.count.isMultiple(of: 2), "odd number of hex digits in \(hex)")
    return stride(from: 0, to: digits.count, by: 2).map { i in
        UInt8(String(digits[i...i + 1]), radix: 16)!
    }
}
