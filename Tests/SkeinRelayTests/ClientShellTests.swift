import Logging
import NIOCore
import NIOEmbedded
import SkeinWire
import Testing

@testable import SkeinRelay

/// The client shell (`ClientConnectionHandler`, `ClientChannel`, the loop's host) on
/// `EmbeddedChannel`s: no sockets, no threads, every step driven by the test.
struct EmbeddedRelay {
    let loop = EmbeddedEventLoop()
    let server: ClientServer

    init() {
        var configuration = RelayConfiguration()
        configuration.clientPort = 0
        server = ClientServer(configuration: configuration, eventLoop: loop, logger: Logger(label: "test"))
    }

    /// A connected client channel with the relay's handler, past INIT.
    func connect(cluster: String = "") throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(handler: ClientConnectionHandler(server: server), loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try send(.initialize(magic: RelayProtocol.clientMagic, version: RelayProtocol.irisVersion, cluster: cluster), on: channel)
        guard case .initialize = try #require(try received(on: channel).first) else {
            Issue.record("no INIT answer")
            return channel
        }
        return channel
    }

    func send(_ frames: ClientFrame..., on channel: EmbeddedChannel) throws {
        var bytes = ByteBuffer()
        for frame in frames { frame.encode(into: &bytes) }
        try channel.writeInbound(bytes)
        channel.pipeline.fireChannelReadComplete()
        loop.run()
    }

    /// Every frame the relay wrote to the channel so far.
    func received(on channel: EmbeddedChannel) throws -> [RelayFrame] {
        var bytes = ByteBuffer()
        while var chunk = try channel.readOutbound(as: ByteBuffer.self) { bytes.writeBuffer(&chunk) }
        var frames: [RelayFrame] = []
        while let frame = try RelayFrame.decode(from: &bytes, limits: WireLimits()) { frames.append(frame) }
        return frames
    }

    /// The last value of `autoRead` the shell set on the channel (true if never set).
    func isReading(_ channel: EmbeddedChannel) -> Bool {
        channel.options.last { $0.option is ChannelOptions.Types.AutoReadOption }.map { $0.value as! Bool } ?? true
    }
}

@Suite("Client shell on EmbeddedChannel")
struct ClientShellTests {
    @Test("a publisher to a subscriber whose output is full is paused, and resumed when it drains")
    func backpressurePausesAndResumesDecoding() throws {
        let relay = EmbeddedRelay()
        let subscriber = try relay.connect()
        let publisher = try relay.connect()
        try relay.send(.subscribe(topic: "t"), on: subscriber)
        try relay.send(.publish(topic: "t", event: ByteBuffer(string: "1")), on: publisher)
        #expect(try relay.received(on: subscriber) == [.publish(topic: "t", event: ByteBuffer(string: "1"))])

        subscriber.isWritable = false
        subscriber.pipeline.fireChannelWritabilityChanged()
        // Two publishes in one read: the first reaches the blocked subscriber and pauses the
        // publisher, so the second waits, undecoded, in the handler.
        try relay.send(
            .publish(topic: "t", event: ByteBuffer(string: "2")), .publish(topic: "t", event: ByteBuffer(string: "3")), on: publisher)
        #expect(!relay.isReading(publisher))
        #expect(try relay.received(on: subscriber) == [.publish(topic: "t", event: ByteBuffer(string: "2"))])

        subscriber.isWritable = true
        subscriber.pipeline.fireChannelWritabilityChanged()
        relay.loop.run()
        #expect(relay.isReading(publisher))
        #expect(try relay.received(on: subscriber) == [.publish(topic: "t", event: ByteBuffer(string: "3"))])
    }

    @Test("bytes that are no frame close that connection with a reason, and no other")
    func malformedInputEndsOneConnection() throws {
        let relay = EmbeddedRelay()
        let bad = try relay.connect()
        let good = try relay.connect()
        try relay.send(.subscribe(topic: "t"), on: good)
        try bad.writeInbound(ByteBuffer(bytes: [0x7f, 0x00]))
        relay.loop.run()
        guard case .close(let reason) = try #require(try relay.received(on: bad).last) else {
            Issue.record("no CLOSE")
            return
        }
        #expect(reason.contains("protocol violation"))
        try relay.send(.publish(topic: "t", event: ByteBuffer(string: "still here")), on: good)
        #expect(try relay.received(on: good) == [.publish(topic: "t", event: ByteBuffer(string: "still here"))])
    }
}
