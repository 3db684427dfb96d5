import NIOConcurrencyHelpers
import NIOCore

/// A survey in progress (`skein/2`): every member of a cluster was asked, on every relay, and
/// their answers arrive as they come. Iterate it for the answers; when the iteration ends,
/// ``tally`` says how many members were asked and what became of them.
///
/// ```swift
/// let survey = try await skein.survey(cluster: "inventory", "count", timeout: .seconds(1))
/// for try await answer in survey {
///     if case .reply(let message) = answer { print(String(buffer: message.body)) }
/// }
/// if let tally = survey.tally { print(tally) }   // asked 3, answered 3, faulted 0, lost 0
/// ```
///
/// A fault is one member's answer, not the end of the survey. The iteration throws only when the
/// survey could not be made: the other network is unreachable or does not export the cluster
/// (`SkeinError.networkUnreachable`, `.notExported`), or the connection was lost. Answers are
/// kept until they are read: at most one per member.
public final class Survey: AsyncSequence, Sendable {
    public typealias Element = Answer

    /// One member's answer.
    public enum Answer: Sendable, Hashable {
        /// Its reply, with the reply's headers.
        case reply(Message)
        /// The fault its handler raised.
        case fault(String)

        /// The reply's body; nil for a fault.
        public var body: ByteBuffer? {
            if case .reply(let message) = self { message.body } else { nil }
        }
    }

    /// How a survey ended: the members it reached, and what became of them
    /// (`asked == answered + faulted + lost`).
    public struct Tally: Sendable, Hashable, CustomStringConvertible {
        public var asked: Int
        public var answered: Int
        public var faulted: Int
        /// Members that went away, or did not answer before the timeout.
        public var lost: Int

        public init(asked: Int, answered: Int, faulted: Int, lost: Int) {
            self.asked = asked
            self.answered = answered
            self.faulted = faulted
            self.lost = lost
        }

        public var description: String { "asked \(asked), answered \(answered), faulted \(faulted), lost \(lost)" }
    }

    private let stream: AsyncThrowingStream<Answer, any Error>
    let continuation: AsyncThrowingStream<Answer, any Error>.Continuation
    private let ended = NIOLockedValueBox<Tally?>(nil)

    init() {
        (stream, continuation) = AsyncThrowingStream.makeStream(of: Answer.self, bufferingPolicy: .unbounded)
    }

    /// The survey's end, once the relay has said it (nil before, or if it failed).
    public var tally: Tally? { ended.withLockedValue { $0 } }

    func finish(_ tally: Tally) {
        ended.withLockedValue { $0 = tally }
        continuation.finish()
    }

    public func makeAsyncIterator() -> AsyncThrowingStream<Answer, any Error>.AsyncIterator {
        stream.makeAsyncIterator()
    }
}

extension SkeinConnection {
    /// Asks every member of `cluster`, on every relay (and, for `name@network`, in that network
    /// where it exports the cluster for requests), and streams their answers (`skein/2`). The
    /// survey ends when every member asked has answered or is gone, or at `timeout`; members on
    /// `skein/1` and `v1.0-draft2` connections receive it as an ordinary request.
    ///
    /// Throws `SkeinError.unsupported` on a connection older than `skein/2` (the relay cannot
    /// survey), and the errors of `request` for a bad message or headers. A timeout of 0 ends at
    /// once with every count 0: nobody is asked.
    public func survey(cluster: String, _ body: ByteBuffer, headers: Headers = Headers(), timeout: Duration) async throws -> Survey {
        try checkSize(body)
        try check(headers)
        let headers = headers.withTraceContext()
        let millis = timeout.wholeMilliseconds
        let survey = Survey()
        let mustWait = try shared.withLockedValue { state throws(SkeinError) -> Bool in
            try state.checkOpen()
            guard state.dialect >= .skein2 else {
                throw SkeinError.unsupported("a survey needs skein/2; this connection speaks \(state.dialect.version)")
            }
            let id = state.nextRequestID
            state.nextRequestID += 1
            state.surveys[id] = survey
            enqueueLocked(&state, .survey(id: id, cluster: cluster, headers: headers.entries, body: body, timeoutMillis: millis))
            survey.continuation.onTermination = { [weak self] _ in
                // Finished, or the iterating task was cancelled: later answers are dropped here.
                // (A survey never iterated is kept until its end, at most its timeout.)
                self?.shared.withLockedValue { _ = $0.surveys.removeValue(forKey: id) }
            }
            return !state.hasRoom(options.sendBufferHighWater)
        }
        if mustWait { try await waitForRoom() }
        return survey
    }

    public func survey(cluster: String, _ body: String, headers: Headers = Headers(), timeout: Duration) async throws -> Survey {
        try await survey(cluster: cluster, ByteBuffer(string: body), headers: headers, timeout: timeout)
    }
}
