// mode link: one-way stream of -n messages of -size bytes between two event loops over TCP on
// 127.0.0.1, in one process, three ways (-variant):
//   raw   : plain SwiftNIO, [u32 length][payload] frames, the physical limit of the stream
//   seal1 : the same with one libsodium AEAD seal per message (one record per message)
//   link  : Skein's peer link (PeerLinks): handshake, then frames packed into records per
//           event-loop tick and sealed once per record
// Output: msgs/s, MiB/s, and CPU µs per message (the whole process: sender and receiver).
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SkeinCrypto
import SkeinRelay
import SkeinWire

func runLinkBench(_ flags: Flags) async throws {
    let variant = flags.string("variant", "link")
    let size = try flags.int("size", 1024)
    let count = try flags.int("n", 1_000_000)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    defer { group.shutdownGracefully { _ in } }
    let sender = group.next()
    let receiver = group.next()
    let payload = ByteBuffer(repeating: 0x5a, count: size)

    let result: (seconds: Double, cpuSeconds: Double)
    // The link variant's PeerLinks live until the event loops are shut down: their links refer
    // to them (unowned) until their channels are gone, which closeAll does not wait for.
    var peerLinks: [PeerLinks] = []
    defer { withExtendedLifetime(peerLinks) {} }
    do {
        switch variant {
        case "raw", "seal1":
            result = try await streamBench(sealed: variant == "seal1", payload: payload, count: count, sender: sender, receiver: receiver)
        case "link":
            result = try await linkBench(payload: payload, count: count, sender: sender, receiver: receiver, keepingAlive: &peerLinks)
        default:
            throw BenchError.usage("bad -variant \(variant) (raw, seal1, link)")
        }
    } catch {
        try? await group.shutdownGracefully()
        throw error
    }
    try? await group.shutdownGracefully()
    emit([
        ("variant", .string(variant)), ("size", .int(Int64(size))), ("n", .int(Int64(count))),
        ("seconds", .number(result.seconds)),
        ("msgs_per_s", .number(Double(count) / result.seconds)),
        ("mib_per_s", .number(Double(count * size) / result.seconds / 1_048_576)),
        ("cpu_us_per_msg", .number(result.cpuSeconds * 1e6 / Double(count))),
        ("cipher", .string(PeerCipher.preferred.first?.description ?? "?")),
    ], label: "link")
}

/// CPU seconds (user + system) of this process so far.
private func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

// MARK: - Raw NIO and per-message sealing

/// Two ends of an established session, made in memory with the real handshake.
private func sessionPair() throws -> (PeerSession, PeerSession) {
    let keyring = Keyring(primary: NetworkKey.generate())
    var cache = HandshakeReplayCache()
    var initiator = HandshakeInitiator(
        network: "bench", nodeID: SecureRandom.bytes(16), keyring: keyring, ephemeralSecret: SecureRandom.bytes(32),
        settings: HandshakeSettings(), now: .now())
    var responder = HandshakeResponder(
        network: "bench", nodeID: SecureRandom.bytes(16), keyring: keyring, ephemeralSecret: SecureRandom.bytes(32),
        settings: HandshakeSettings(), now: .now())
    guard case .send(let m2) = responder.receive(initiator.start(), replayCache: &cache),
        case .established(let a, let m3, _) = initiator.receive(m2),
        case .established(let b, _, _) = responder.receive(m3, replayCache: &cache)
    else { throw BenchError.failed("the in-memory handshake did not complete") }
    return (a, b)
}

private final class CountingReceiver: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let expected: Int
    let done: EventLoopPromise<Void>
    var opener: RecordOpener?
    var buffer = ByteBuffer()
    var received = 0

    init(expected: Int, opener: RecordOpener?, done: EventLoopPromise<Void>) {
        self.expected = expected
        self.opener = opener
        self.done = done
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        if opener != nil {
            do {
                while let record = try opener!.next(from: &buffer) {
                    _ = record
                    received += 1
                }
            } catch {
                done.fail(error)
            }
        } else {
            while let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self),
                buffer.readableBytes >= 4 + Int(length)
            {
                buffer.moveReaderIndex(forwardBy: 4 + Int(length))
                received += 1
            }
        }
        buffer.discardReadBytes()
        if received >= expected { done.succeed(()) }
    }
}

private final class FloodSender: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let payload: ByteBuffer
    var remaining: Int
    var sealer: RecordSealer?

    init(payload: ByteBuffer, count: Int, sealer: RecordSealer?) {
        self.payload = payload
        self.remaining = count
        self.sealer = sealer
    }

    func channelActive(context: ChannelHandlerContext) { pump(context) }
    func channelWritabilityChanged(context: ChannelHandlerContext) { pump(context) }

    func pump(_ context: ChannelHandlerContext) {
        while context.channel.isWritable && remaining > 0 {
            // One write of up to 256 KiB of messages, then flush.
            var out = context.channel.allocator.buffer(capacity: 256 << 10)
            while remaining > 0 && out.readableBytes < 256 << 10 {
                if sealer != nil {
                    sealer!.seal(payload, into: &out)
                } else {
                    out.writeInteger(UInt32(payload.readableBytes))
                    out.writeImmutableBuffer(payload)
                }
                remaining -= 1
            }
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        }
    }
}

private func streamBench(sealed: Bool, payload: ByteBuffer, count: Int, sender: any EventLoop, receiver: any EventLoop) async throws -> (Double, Double) {
    let sessions = sealed ? try sessionPair() : nil
    let done = receiver.makePromise(of: Void.self)
    let server = try await ServerBootstrap(group: receiver)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(CountingReceiver(expected: count, opener: sessions?.1.opener, done: done))
            }
        }
        .bind(host: "127.0.0.1", port: 0).get()
    let cpu0 = processCPUSeconds()
    let t0 = DispatchTime.now().uptimeNanoseconds
    let client = try await ClientBootstrap(group: sender)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(FloodSender(payload: payload, count: count, sealer: sessions?.0.sealer))
            }
        }
        .connect(host: "127.0.0.1", port: server.localAddress!.port!).get()
    try await done.futureResult.get()
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    let cpu = processCPUSeconds() - cpu0
    try await client.close()
    try await server.close()
    return (seconds, cpu)
}

// MARK: - The peer link

private func linkBench(
    payload: ByteBuffer, count: Int, sender: any EventLoop, receiver: any EventLoop, keepingAlive peerLinks: inout [PeerLinks]
) async throws -> (Double, Double) {
    let keyring = Keyring(primary: NetworkKey.generate())
    var logger = Logger(label: "bench")
    logger.logLevel = .error
    func node(_ name: String, _ loop: any EventLoop) async throws -> (PeerLinks, String) {
        let links = PeerLinks(
            identity: PeerIdentity(network: "bench", nodeID: SecureRandom.bytes(16), name: name, address: ""),
            keyring: keyring, settings: PeerLinkSettings(), eventLoop: loop, logger: logger)
        let port = try await links.listen(host: "127.0.0.1", port: 0)
        try await loop.submit { links.advertise("127.0.0.1:\(port)") }.get()
        return (links, "127.0.0.1:\(port)")
    }
    let (a, _) = try await node("a", sender)
    let (b, bAddress) = try await node("b", receiver)
    peerLinks += [a, b]
    let done = receiver.makePromise(of: Void.self)
    let received = try await receiver.submit { NIOLoopBoundBox(0, eventLoop: receiver) }.get()
    try await receiver.submit {
        b.onFrame = { _, _ in
            received.value += 1
            if received.value == count { done.succeed(()) }
        }
    }.get()

    // Warm up: the handshake completes before the clock starts.
    let up = sender.makePromise(of: Void.self)
    try await sender.submit {
        a.onLinkUp = { _ in up.succeed(()) }
        a.link(to: bAddress).send(.ping(token: 0))
    }.get()
    try await up.futureResult.get()

    let cpu0 = processCPUSeconds()
    let t0 = DispatchTime.now().uptimeNanoseconds
    let remaining = try await sender.submit { NIOLoopBoundBox(count, eventLoop: sender) }.get()
    let frame = PeerFrame.publish(topic: "t", body: payload)
    @Sendable func pump() {
        let link = a.link(to: bAddress)
        var budget = 256 << 10
        while remaining.value > 0 && budget > 0 && link.isWritable {
            link.send(frame)
            remaining.value -= 1
            budget -= payload.readableBytes + 8
        }
        // Let the link seal and write this batch (its flush runs next on the loop), then go on
        // at once if the socket still takes bytes, or when it drains.
        if remaining.value > 0 && link.isWritable { sender.execute { pump() } }
    }
    try await sender.submit {
        a.onWritable = { _ in if remaining.value > 0 { pump() } }
        pump()
    }.get()
    try await done.futureResult.get()
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    let cpu = processCPUSeconds() - cpu0
    await a.closeAll(reason: "bench over")
    await b.closeAll(reason: "bench over")
    return (seconds, cpu)
}
