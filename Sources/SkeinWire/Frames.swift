import NIOCore

/// The relay protocol versions this module speaks.
public enum RelayProtocol {
    /// The Iris relay protocol, as spoken by iris-go/java/erl/scala v1 bindings.
    public static let irisVersion = "v1.0-draft2"
    /// The magic string a binding sends in its INIT.
    public static let clientMagic = "iris-client-magic"
    /// The magic string a relay sends in its INIT and DENY.
    public static let relayMagic = "iris-relay-magic"
    /// Skein's extension (Docs/skein-1.md): `v1.0-draft2` plus distinct, early failures.
    public static let skeinVersion = "skein/1"
    /// `skein/1` plus wildcards, headers and surveys (Docs/skein-2.md).
    public static let skein2Version = "skein/2"
}

/// Which version a connection speaks, once INIT has been exchanged. Each later version is the
/// one before plus frames of its own, so versions compare: `dialect >= .skein1` is "has the
/// failure frames".
public enum ProtocolDialect: Int, Sendable, Equatable, Comparable, CaseIterable {
    /// `v1.0-draft2`: what every Iris binding speaks.
    case iris
    /// `skein/1` (Docs/skein-1.md).
    case skein1
    /// `skein/2` (Docs/skein-2.md).
    case skein2

    public var version: String {
        switch self {
        case .iris: RelayProtocol.irisVersion
        case .skein1: RelayProtocol.skeinVersion
        case .skein2: RelayProtocol.skein2Version
        }
    }

    public init?(version: String) {
        switch version {
        case RelayProtocol.irisVersion: self = .iris
        case RelayProtocol.skeinVersion: self = .skein1
        case RelayProtocol.skein2Version: self = .skein2
        default: return nil
        }
    }

    /// `skein/1` or later: failures come early, as frames of their own.
    public var hasFailureFrames: Bool { self >= .skein1 }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// One message header (`skein/2`): a key, at least one byte, and a value. Keys may repeat.
public struct Header: Sendable, Hashable {
    public var key: String
    public var value: String

    public init(_ key: String, _ value: String) {
        self.key = key
        self.value = value
    }
}

/// Why the relay ended a request, a tunnel build or an operation early (`skein/1` only,
/// Docs/skein-1.md "Failure reasons"). Unknown reasons from a later relay are kept as `other`.
public enum FailureReason: Sendable, Equatable, Hashable, CustomStringConvertible {
    case noMembers
    case memberLost
    case networkUnreachable
    case notExported
    /// `skein/2`: a pattern that is not one, or a wildcard in a published topic.
    case invalidName
    case other(UInt8)

    public init(rawValue: UInt8) {
        switch rawValue {
        case 1: self = .noMembers
        case 2: self = .memberLost
        case 3: self = .networkUnreachable
        case 4: self = .notExported
        case 5: self = .invalidName
        default: self = .other(rawValue)
        }
    }

    public var rawValue: UInt8 {
        switch self {
        case .noMembers: 1
        case .memberLost: 2
        case .networkUnreachable: 3
        case .notExported: 4
        case .invalidName: 5
        case .other(let code): code
        }
    }

    public var description: String {
        switch self {
        case .noMembers: "no members"
        case .memberLost: "member lost"
        case .networkUnreachable: "network unreachable"
        case .notExported: "not exported"
        case .invalidName: "invalid name"
        case .other(let code): "failure \(code)"
        }
    }
}

/// One-byte opcodes of the relay protocol (RELAY-PROTOCOL.md, "Opcodes").
public enum Opcode: UInt8, Sendable, CaseIterable {
    case initialize = 0x00
    case deny = 0x01
    case close = 0x02
    case broadcast = 0x03
    case request = 0x04
    case reply = 0x05
    case subscribe = 0x06
    case unsubscribe = 0x07
    case publish = 0x08
    case tunnelInit = 0x09
    case tunnelConfirm = 0x0a
    case tunnelAllow = 0x0b
    case tunnelTransfer = 0x0c
    case tunnelClose = 0x0d
    /// `skein/1`, relay → binding only (Docs/skein-1.md).
    case requestFailed = 0x20
    case tunnelFailed = 0x21
    case refused = 0x22
    /// `skein/2` (Docs/skein-2.md): frames with headers, both ways.
    case hbroadcast = 0x30
    case hrequest = 0x31
    case hreply = 0x32
    /// Binding → relay only.
    case hpublish = 0x33
    /// Relay → binding only.
    case event = 0x34
    /// Binding → relay only: ask every member of a cluster.
    case survey = 0x35
    /// Relay → binding only: one member's answer to a survey, and the survey's end.
    case surveyAnswer = 0x36
    case surveyEnd = 0x37
}

/// How a survey ended (SURVEY END): members it reached, and what became of them
/// (`asked = answered + faulted + lost`).
public struct SurveyTally: Sendable, Equatable, CustomStringConvertible {
    public var asked: UInt64
    public var answered: UInt64
    public var faulted: UInt64
    public var lost: UInt64

    public init(asked: UInt64 = 0, answered: UInt64 = 0, faulted: UInt64 = 0, lost: UInt64 = 0) {
        self.asked = asked
        self.answered = answered
        self.faulted = faulted
        self.lost = lost
    }

    /// Both tallies, member by member (saturating: a count never wraps).
    public static func + (a: Self, b: Self) -> Self {
        func add(_ x: UInt64, _ y: UInt64) -> UInt64 {
            let (sum, overflow) = x.addingReportingOverflow(y)
            return overflow ? .max : sum
        }
        return Self(asked: add(a.asked, b.asked), answered: add(a.answered, b.answered), faulted: add(a.faulted, b.faulted), lost: add(a.lost, b.lost))
    }

    /// This tally made consistent with what is known: at least `answered` and `faulted` (the
    /// answers seen), `asked` at least their sum, and `lost` the rest, so
    /// `asked = answered + faulted + lost` holds whatever another relay sent.
    public func reconciled(answered seenAnswered: UInt64, faulted seenFaulted: UInt64) -> Self {
        let answered = max(self.answered, seenAnswered)
        let faulted = max(self.faulted, seenFaulted)
        let (answers, overflow) = answered.addingReportingOverflow(faulted)
        guard !overflow else { return Self(asked: .max, answered: answered, faulted: .max - answered, lost: 0) }
        let asked = max(self.asked, answers)
        return Self(asked: asked, answered: answered, faulted: faulted, lost: asked - answers)
    }

    public var description: String { "asked \(asked), answered \(answered), faulted \(faulted), lost \(lost)" }
}

/// How a member answered a request (binding → relay).
public enum ReplyOutcome: Sendable, Equatable {
    case success(ByteBuffer)
    case fault(String)
}

/// How a request ended, as the relay reports it to the caller (relay → binding).
public enum RequestOutcome: Sendable, Equatable {
    case timedOut
    case success(ByteBuffer)
    case fault(String)
}

/// How a tunnel build ended, as the relay reports it to the initiator.
public enum TunnelBuildOutcome: Sendable, Equatable {
    case timedOut
    case built(chunkLimit: UInt64)
}

/// A frame sent by a binding to its relay.
public enum ClientFrame: Sendable, Equatable {
    case initialize(magic: String, version: String, cluster: String)
    case close
    case broadcast(cluster: String, message: ByteBuffer)
    case request(id: UInt64, cluster: String, body: ByteBuffer, timeoutMillis: UInt64)
    case reply(id: UInt64, outcome: ReplyOutcome)
    case subscribe(topic: String)
    case unsubscribe(topic: String)
    case publish(topic: String, event: ByteBuffer)
    case tunnelInit(tunnelID: UInt64, cluster: String, timeoutMillis: UInt64)
    case tunnelConfirm(buildID: UInt64, tunnelID: UInt64)
    case tunnelAllow(tunnelID: UInt64, bytes: UInt64)
    case tunnelTransfer(tunnelID: UInt64, sizeOrContinuation: UInt64, chunk: ByteBuffer)
    case tunnelClose(tunnelID: UInt64)
    /// `skein/2`: the same as the plain frames, with headers.
    case hbroadcast(cluster: String, headers: [Header], message: ByteBuffer)
    case hrequest(id: UInt64, cluster: String, headers: [Header], body: ByteBuffer, timeoutMillis: UInt64)
    case hreply(id: UInt64, headers: [Header], outcome: ReplyOutcome)
    case hpublish(topic: String, headers: [Header], event: ByteBuffer)
    /// `skein/2`: ask every member of `cluster`; answers come as SURVEY ANSWER, then SURVEY END.
    case survey(id: UInt64, cluster: String, headers: [Header], body: ByteBuffer, timeoutMillis: UInt64)

    public var opcode: Opcode {
        switch self {
        case .initialize: .initialize
        case .close: .close
        case .broadcast: .broadcast
        case .request: .request
        case .reply: .reply
        case .subscribe: .subscribe
        case .unsubscribe: .unsubscribe
        case .publish: .publish
        case .tunnelInit: .tunnelInit
        case .tunnelConfirm: .tunnelConfirm
        case .tunnelAllow: .tunnelAllow
        case .tunnelTransfer: .tunnelTransfer
        case .tunnelClose: .tunnelClose
        case .hbroadcast: .hbroadcast
        case .hrequest: .hrequest
        case .hreply: .hreply
        case .hpublish: .hpublish
        case .survey: .survey
        }
    }
}

/// A frame sent by a relay to a binding.
public enum RelayFrame: Sendable, Equatable {
    case initialize(magic: String, version: String)
    case deny(magic: String, reason: String)
    case close(reason: String)
    case broadcast(message: ByteBuffer)
    case request(id: UInt64, body: ByteBuffer, timeoutMillis: UInt64)
    case reply(id: UInt64, outcome: RequestOutcome)
    case publish(topic: String, event: ByteBuffer)
    case tunnelInit(buildID: UInt64, chunkLimit: UInt64)
    case tunnelConfirm(tunnelID: UInt64, outcome: TunnelBuildOutcome)
    case tunnelAllow(tunnelID: UInt64, bytes: UInt64)
    case tunnelTransfer(tunnelID: UInt64, sizeOrContinuation: UInt64, chunk: ByteBuffer)
    case tunnelClose(tunnelID: UInt64, reason: String)
    /// `skein/1`: the request ended early; takes the place of its REPLY.
    case requestFailed(id: UInt64, reason: FailureReason, detail: String)
    /// `skein/1`: the tunnel build failed for a reason; takes the place of TUNNEL CONFIRM.
    case tunnelFailed(tunnelID: UInt64, reason: FailureReason, detail: String)
    /// `skein/1`: a BROADCAST, SUBSCRIBE or PUBLISH (its opcode) of `name` was not carried out.
    case refused(opcode: UInt8, name: String, reason: FailureReason, detail: String)
    /// `skein/2`: an event for `subscription` (a pattern, or any subscription when the event
    /// carries headers), published to `topic`.
    case event(subscription: String, topic: String, headers: [Header], event: ByteBuffer)
    /// `skein/2`: the same as the plain frames, with headers.
    case hbroadcast(headers: [Header], message: ByteBuffer)
    case hrequest(id: UInt64, headers: [Header], body: ByteBuffer, timeoutMillis: UInt64)
    case hreply(id: UInt64, headers: [Header], outcome: RequestOutcome)
    /// `skein/2`: one member's answer to survey `id`.
    case surveyAnswer(id: UInt64, headers: [Header], outcome: ReplyOutcome)
    /// `skein/2`: survey `id` is over; no answer follows.
    case surveyEnd(id: UInt64, tally: SurveyTally)

    public var opcode: Opcode {
        switch self {
        case .initialize: .initialize
        case .deny: .deny
        case .close: .close
        case .broadcast: .broadcast
        case .request: .request
        case .reply: .reply
        case .publish: .publish
        case .tunnelInit: .tunnelInit
        case .tunnelConfirm: .tunnelConfirm
        case .tunnelAllow: .tunnelAllow
        case .tunnelTransfer: .tunnelTransfer
        case .tunnelClose: .tunnelClose
        case .requestFailed: .requestFailed
        case .tunnelFailed: .tunnelFailed
        case .refused: .refused
        case .event: .event
        case .hbroadcast: .hbroadcast
        case .hrequest: .hrequest
        case .hreply: .hreply
        case .surveyAnswer: .surveyAnswer
        case .surveyEnd: .surveyEnd
        }
    }
}
