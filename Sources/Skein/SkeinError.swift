internal import SkeinWire

/// Every way a binding call can fail.
///
/// A `SkeinError` has two parts: its ``code``, which says programmatically what went wrong, and
/// its ``detail``, the text that came with it (a member's fault, the relay's reason, a cluster
/// name). New codes can be added in any release without breaking your code: ``Code`` is a struct,
/// not an enum, so a `switch` over it always has a `default`, and nothing that compiles today
/// stops compiling when a new code appears.
///
/// Match on the code, never on the description:
///
/// ```swift
/// do {
///     let reply = try await connection.request(cluster: "echo", message: message, timeout: .seconds(1))
/// } catch let error as SkeinError where error.code == .timedOut {
///     // retry, or give up
/// } catch SkeinError.Code.remoteFault {
///     // the member answered with a fault
/// }
/// ```
///
/// Two errors are equal when their codes and their details are. To ask only "is this the same
/// kind of failure", compare the codes: `error.code == .noMembers`.
public struct SkeinError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure a ``SkeinError`` is: an extensible set of codes.
    ///
    /// Compare with `==` or match in a `switch` (which needs a `default`, since later releases
    /// may add codes).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Backing: Hashable, Sendable {
            case timedOut
            case remoteFault
            case connectionClosed
            case denied
            case protocolViolation
            case tunnelClosed
            case alreadySubscribed
            case cannotConnect
            case invalidName
            case messageTooLarge
            case noMembers
            case memberLost
            case networkUnreachable
            case notExported
            case relayFailure
            case unsupported
        }

        private let backing: Backing

        private init(_ backing: Backing) { self.backing = backing }

        /// The code's name, as written in Swift (`"timedOut"`).
        public var description: String {
            switch backing {
            case .timedOut: "timedOut"
            case .remoteFault: "remoteFault"
            case .connectionClosed: "connectionClosed"
            case .denied: "denied"
            case .protocolViolation: "protocolViolation"
            case .tunnelClosed: "tunnelClosed"
            case .alreadySubscribed: "alreadySubscribed"
            case .cannotConnect: "cannotConnect"
            case .invalidName: "invalidName"
            case .messageTooLarge: "messageTooLarge"
            case .noMembers: "noMembers"
            case .memberLost: "memberLost"
            case .networkUnreachable: "networkUnreachable"
            case .notExported: "notExported"
            case .relayFailure: "relayFailure"
            case .unsupported: "unsupported"
            }
        }

        /// The relay answered timedOut: no member answered before the deadline.
        public static let timedOut = Code(.timedOut)
        /// The member answered with a fault; the detail is the member's text.
        public static let remoteFault = Code(.remoteFault)
        /// The connection is closed; the detail is the relay's reason (empty when graceful).
        public static let connectionClosed = Code(.connectionClosed)
        /// The relay refused the handshake (DENY); the detail is its reason.
        public static let denied = Code(.denied)
        /// The relay sent bytes that are not the relay protocol; the detail says what.
        public static let protocolViolation = Code(.protocolViolation)
        /// The tunnel is closed; the detail is the reason, empty when the other side closed it
        /// gracefully.
        public static let tunnelClosed = Code(.tunnelClosed)
        /// This connection already subscribes to the topic; the detail is the topic.
        public static let alreadySubscribed = Code(.alreadySubscribed)
        /// The connection could not be established; the detail says why.
        public static let cannotConnect = Code(.cannotConnect)
        /// A name the protocol cannot carry (e.g. an empty cluster name for a member).
        public static let invalidName = Code(.invalidName)
        /// A message larger than the connection's `maxMessageSize` (see
        /// ``SkeinError/messageSize`` and ``SkeinError/messageSizeLimit``).
        public static let messageTooLarge = Code(.messageTooLarge)
        /// `skein/1`: no member of the cluster is known anywhere the relay can reach (a
        /// `v1.0-draft2` request would wait for one until its deadline). The detail names the
        /// cluster.
        public static let noMembers = Code(.noMembers)
        /// `skein/1`: the member (or the relay) holding the request or tunnel build went away;
        /// the request may or may not have been processed, and is never sent to another member.
        public static let memberLost = Code(.memberLost)
        /// `skein/1`: `name@network` and no gateway to that network is reachable now.
        public static let networkUnreachable = Code(.networkUnreachable)
        /// `skein/1`: the other network does not export that name for this operation.
        public static let notExported = Code(.notExported)
        /// `skein/1`: a failure reason this binding does not know (a newer relay); see
        /// ``SkeinError/relayFailureReason``.
        public static let relayFailure = Code(.relayFailure)
        /// The connection's protocol version cannot do this (a survey needs `skein/2`); the
        /// detail says what it speaks.
        public static let unsupported = Code(.unsupported)

        /// Matches any error that is a ``SkeinError`` with this code, for `catch` clauses:
        /// `catch SkeinError.Code.timedOut { … }`.
        public static func ~= (pattern: Code, error: any Error) -> Bool {
            (error as? SkeinError)?.code == pattern
        }
    }

    /// Numbers that some codes carry besides their text.
    private enum Extra: Hashable, Sendable {
        case none
        case size(Int, limit: Int)
        case reason(UInt8)
    }

    /// What kind of failure this is.
    public let code: Code

    /// The text that came with the failure: the member's fault, the relay's or tunnel's reason,
    /// the topic, the cluster name, … Empty for ``Code/timedOut`` and for a graceful close.
    public let detail: String

    private let extra: Extra

    private init(_ code: Code, _ detail: String, _ extra: Extra = .none) {
        self.code = code
        self.detail = detail
        self.extra = extra
    }

    /// For ``Code/messageTooLarge``: the message's size in bytes; `nil` for other codes.
    public var messageSize: Int? {
        if case .size(let size, _) = extra { return size }
        return nil
    }

    /// For ``Code/messageTooLarge``: the limit the message exceeded, in bytes; `nil` for other
    /// codes.
    public var messageSizeLimit: Int? {
        if case .size(_, let limit) = extra { return limit }
        return nil
    }

    /// For ``Code/relayFailure``: the `skein/1` failure reason byte this binding does not know;
    /// `nil` for other codes.
    public var relayFailureReason: UInt8? {
        if case .reason(let reason) = extra { return reason }
        return nil
    }

    public var description: String {
        switch code {
        case .timedOut: "timed out"
        case .remoteFault: "remote fault: \(detail)"
        case .connectionClosed: detail.isEmpty ? "connection closed" : "connection closed: \(detail)"
        case .denied: "relay refused the connection: \(detail)"
        case .protocolViolation: "protocol violation: \(detail)"
        case .tunnelClosed: detail.isEmpty ? "tunnel closed" : "tunnel closed: \(detail)"
        case .alreadySubscribed: "already subscribed to topic \(detail.debugDescription)"
        case .cannotConnect: "cannot connect to the relay: \(detail)"
        case .invalidName: detail
        case .messageTooLarge: detail
        case .noMembers: "no members: \(detail)"
        case .memberLost: "member lost: \(detail)"
        case .networkUnreachable: "network unreachable: \(detail)"
        case .notExported: "not exported: \(detail)"
        case .relayFailure: "relay failure \(relayFailureReason ?? 0): \(detail)"
        default: detail.isEmpty ? code.description : "\(code): \(detail)"
        }
    }
}

// MARK: - Construction

extension SkeinError {
    /// No member answered before the deadline.
    public static let timedOut = SkeinError(.timedOut, "")

    /// The member answered with `fault`.
    public static func remoteFault(_ fault: String) -> SkeinError { SkeinError(.remoteFault, fault) }
    public static func unsupported(_ detail: String) -> SkeinError { SkeinError(.unsupported, detail) }

    /// The connection is closed; `reason` is empty when the close was graceful.
    public static func connectionClosed(reason: String) -> SkeinError { SkeinError(.connectionClosed, reason) }

    /// The relay refused the handshake with `reason`.
    public static func denied(_ reason: String) -> SkeinError { SkeinError(.denied, reason) }

    /// The relay sent bytes that are not the relay protocol.
    public static func protocolViolation(_ what: String) -> SkeinError { SkeinError(.protocolViolation, what) }

    /// The tunnel is closed; `reason` is empty when the other side closed it gracefully.
    public static func tunnelClosed(reason: String) -> SkeinError { SkeinError(.tunnelClosed, reason) }

    /// This connection already subscribes to `topic`.
    public static func alreadySubscribed(topic: String) -> SkeinError { SkeinError(.alreadySubscribed, topic) }

    /// The connection could not be established.
    public static func cannotConnect(_ why: String) -> SkeinError { SkeinError(.cannotConnect, why) }

    /// A name the protocol cannot carry.
    public static func invalidName(_ why: String) -> SkeinError { SkeinError(.invalidName, why) }

    /// A message of `size` bytes, larger than `limit`. The detail is the description's text.
    public static func messageTooLarge(size: Int, limit: Int) -> SkeinError {
        SkeinError(.messageTooLarge, "message of \(size) bytes exceeds the limit of \(limit) bytes", .size(size, limit: limit))
    }

    /// No member of `cluster` is known anywhere the relay can reach.
    public static func noMembers(_ cluster: String) -> SkeinError { SkeinError(.noMembers, cluster) }

    /// The member or relay holding the request or tunnel build went away.
    public static func memberLost(_ detail: String) -> SkeinError { SkeinError(.memberLost, detail) }

    /// No gateway to the named network is reachable now.
    public static func networkUnreachable(_ detail: String) -> SkeinError { SkeinError(.networkUnreachable, detail) }

    /// The other network does not export that name for this operation.
    public static func notExported(_ detail: String) -> SkeinError { SkeinError(.notExported, detail) }

    /// A `skein/1` failure `reason` this binding does not know, with its text.
    public static func relayFailure(reason: UInt8, detail: String) -> SkeinError {
        SkeinError(.relayFailure, detail, .reason(reason))
    }

    /// The error for a `skein/1` failure reason.
    init(_ reason: FailureReason, detail: String) {
        switch reason {
        case .noMembers: self = .noMembers(detail)
        case .memberLost: self = .memberLost(detail)
        case .networkUnreachable: self = .networkUnreachable(detail)
        case .notExported: self = .notExported(detail)
        case .invalidName: self = .invalidName(detail)
        case .other(let code): self = .relayFailure(reason: code, detail: detail)
        }
    }
}
