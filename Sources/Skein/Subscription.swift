import NIOConcurrencyHelpers
import NIOCore

typealias FeedProducer = NIOThrowingAsyncSequenceProducer<
    Subscription.Event, any Error, NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark, FeedDelegate
>

/// A bounded, backpressured queue of inbound events (one topic's events, or a member's
/// broadcasts). When it is full the connection stops reading from the relay until the
/// consumer catches up; the relay then holds (and bounds) what follows.
///
/// The feed is the producing end, kept by the connection. The consuming end (the sequence) is
/// returned by `make` and kept only by its consumer, so a consumer that goes away without
/// iterating (a dropped `Subscription`) ends the feed instead of filling it forever and
/// stalling the whole connection.
final class EventFeed: @unchecked Sendable {
    // @unchecked: `source` is Sendable; `isPaused` is only touched on the event loop;
    // `iterated` is behind its lock.
    let source: FeedProducer.Source
    @exclusivity(unchecked) var isPaused = false
    /// The sequence allows one iterator; later iterations end at once instead of trapping.
    private let iterated = NIOLockedValueBox(false)

    private init(source: FeedProducer.Source) {
        self.source = source
    }

    static func make(buffer: Int, delegate: FeedDelegate) -> (feed: EventFeed, sequence: FeedProducer) {
        let made = FeedProducer.makeSequence(
            elementType: Subscription.Event.self,
            failureType: (any Error).self,
            backPressureStrategy: .init(lowWatermark: max(1, buffer / 2), highWatermark: max(2, buffer)),
            finishOnDeinit: true,
            delegate: delegate)
        return (EventFeed(source: made.source), made.sequence)
    }

    /// True the first time only.
    func claimIteration() -> Bool {
        iterated.withLockedValue { iterated in
            defer { iterated = true }
            return !iterated
        }
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
    @exclusivity(unchecked) weak var feed: EventFeed?
}

/// The events of one topic, or of every topic a `skein/2` pattern matches, in publish order
/// per publisher. Iterate it to receive each event's body, or iterate ``events`` to receive each
/// with the topic it was published to; ending the iteration, calling `unsubscribe()`, or
/// dropping every copy of an un-iterated subscription unsubscribes the connection. A
/// subscription is iterated once (either way): iterating it again ends at once.
public struct Subscription: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer
    public typealias Failure = any Error

    /// One event: the topic it was published to (for a pattern, the topic that matched) and
    /// its body.
    public struct Event: Sendable {
        public var topic: String
        public var body: ByteBuffer
        /// The publisher's headers (`skein/2`; empty from an older publisher).
        public var headers: Headers

        public init(topic: String, body: ByteBuffer, headers: Headers = Headers()) {
            self.topic = topic
            self.body = body
            self.headers = headers
        }
    }

    /// The subscribed topic or pattern, as given to `subscribe(topic:)`.
    public let topic: String
    let feed: EventFeed
    private let sequence: FeedProducer
    let connection: SkeinConnection

    init(topic: String, connection: SkeinConnection, buffer: Int) {
        self.topic = topic
        self.connection = connection
        let box = ObjectIdentifierBox()
        (self.feed, self.sequence) = EventFeed.make(
            buffer: buffer, delegate: FeedDelegate(kind: .topic(topic), connection: connection, feedID: box))
        box.feed = feed
    }

    /// Stops the subscription: the relay stops sending its events and iteration ends.
    public func unsubscribe() {
        connection.unsubscribe(topic: topic, feed: feed)
        feed.source.finish()
    }

    public func makeAsyncIterator() -> Iterator {
        // NIO's sequence traps on a second iterator; a second iteration simply finds the
        // subscription over.
        Iterator(base: feed.claimIteration() ? sequence.makeAsyncIterator() : nil)
    }

    /// The same events with their topics.
    public var events: Events { Events(subscription: self) }

    public struct Iterator: AsyncIteratorProtocol {
        var base: FeedProducer.AsyncIterator?

        /// The next event's body; nil after `unsubscribe()`; throws when the connection ends.
        public mutating func next() async throws -> ByteBuffer? {
            guard base != nil else { return nil }
            return try await base!.next()?.body
        }
    }

    /// The subscription's events with the topic each was published to.
    public struct Events: AsyncSequence, Sendable {
        public typealias Element = Event
        public typealias Failure = any Error
        let subscription: Subscription

        public func makeAsyncIterator() -> Iterator {
            Iterator(base: subscription.feed.claimIteration() ? subscription.sequence.makeAsyncIterator() : nil)
        }

        public struct Iterator: AsyncIteratorProtocol {
            var base: FeedProducer.AsyncIterator?

            /// The next event; nil after `unsubscribe()`; throws when the connection ends.
            public mutating func next() async throws -> Event? {
                guard base != nil else { return nil }
                return try await base!.next()
            }
        }
    }
}
