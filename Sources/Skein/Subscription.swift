import NIOCore

typealias FeedProducer = NIOThrowingAsyncSequenceProducer<
    ByteBuffer, any Error, NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark, FeedDelegate
>

/// A bounded, backpressured queue of inbound events (one topic's events, or a member's
/// broadcasts). When it is full the connection stops reading from the relay until the
/// consumer catches up; the relay then holds (and bounds) what follows.
final class EventFeed: @unchecked Sendable {
    // @unchecked: `source` is Sendable; `isPaused` is only touched on the event loop.
    let source: FeedProducer.Source
    let sequence: FeedProducer
    var isPaused = false

    init(buffer: Int, delegate: FeedDelegate) {
        let made = FeedProducer.makeSequence(
            elementType: ByteBuffer.self,
            failureType: (any Error).self,
            backPressureStrategy: .init(lowWatermark: max(1, buffer / 2), highWatermark: max(2, buffer)),
            finishOnDeinit: true,
            delegate: delegate)
        self.source = made.source
        self.sequence = made.sequence
    }
}

struct FeedDelegate: NIOAsyncSequenceProducerDelegate {
    enum Kind: Sendable {
        case topic(String)
        case broadcasts
    }
    let kind: Kind
    let connection: SkeinConnection
    let feedID: ObjectIdentifierBox

    func produceMore() {
        let connection = self.connection
        let feedID = self.feedID
        connection.channel.eventLoop.execute {
            connection.inbound?.feedResumed(feedID.feed)
        }
    }

    func didTerminate() {
        if case .topic(let topic) = kind, let feed = feedID.feed {
            connection.unsubscribe(topic: topic, feed: feed)
        }
    }
}

/// Lets a delegate refer to the feed that owns it without a retain cycle.
final class ObjectIdentifierBox: @unchecked Sendable {
    // @unchecked: written once, before the feed is shared.
    weak var feed: EventFeed?
}

/// The events of one topic, in publish order per publisher. Iterate it to receive events;
/// ending the iteration or calling `unsubscribe()` unsubscribes the connection.
public struct Subscription: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer
    public typealias Failure = any Error

    /// The subscribed topic.
    public let topic: String
    let feed: EventFeed
    let connection: SkeinConnection

    init(topic: String, connection: SkeinConnection, buffer: Int) {
        self.topic = topic
        self.connection = connection
        let box = ObjectIdentifierBox()
        self.feed = EventFeed(buffer: buffer, delegate: FeedDelegate(kind: .topic(topic), connection: connection, feedID: box))
        box.feed = feed
    }

    /// Stops the subscription: the relay stops sending its events and iteration ends.
    public func unsubscribe() {
        connection.unsubscribe(topic: topic, feed: feed)
        feed.source.finish()
    }

    public func makeAsyncIterator() -> Iterator {
        Iterator(base: feed.sequence.makeAsyncIterator())
    }

    public struct Iterator: AsyncIteratorProtocol {
        var base: FeedProducer.AsyncIterator

        /// The next event; nil after `unsubscribe()`; throws when the connection ends.
        public mutating func next() async throws -> ByteBuffer? {
            try await base.next()
        }
    }
}
