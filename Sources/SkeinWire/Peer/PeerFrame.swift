import NIOCore
import SkeinFederation

/// The peer protocol's version of the frame layer (Docs/peer-protocol.md §5). The handshake
/// carries the peer protocol version; this layout belongs to version 2 (version 1 had no HOLD
/// and RELEASE).
public enum PeerProtocol {
    public static let version: UInt8 = 2
}

/// What a HOLD or RELEASE names (Docs/mesh.md, "Flow control"): the traffic of one kind and
/// name the receiver of the frame sends to its sender — one topic's events, one cluster's
/// broadcasts, or one federated topic's events.
public enum PeerFlowStream: Sendable, Hashable {
    case broadcast(cluster: String)
    case publish(topic: String)
    case event(topic: String)

    /// The kind of the frames it names (BROADCAST, PUBLISH or EVENT): its tag on the wire.
    public var kind: PeerFrame.Kind {
        switch self {
        case .broadcast: .broadcast
        case .publish: .publish
        case .event: .event
        }
    }

    public var name: String {
        switch self {
        case .broadcast(let name), .publish(let name), .event(let name): name
        }
    }

    init?(kind: UInt8, name: String) {
        switch PeerFrame.Kind(rawValue: kind) {
        case .broadcast: self = .broadcast(cluster: name)
        case .publish: self = .publish(topic: name)
        case .event: self = .event(topic: name)
        default: return nil
        }
    }
}

/// Which queue a frame travels in. Each record is filled control first, then interactive, then
/// bulk, so bulk data never delays a control frame or a request by more than one record.
public enum PeerTrafficClass: Int, Sendable, CaseIterable {
    case control = 0
    case interactive = 1
    case bulk = 2
}

/// How a request ended, as one relay tells another (the mesh, issue 5, uses these).
extension PeerReplyOutcome {
    /// A member's answer as one relay tells another (SURVEY ANSWER shares REPLY's outcomes 0 and 1).
    init(_ answer: ReplyOutcome) {
        switch answer {
        case .success(let body): self = .success(body)
        case .fault(let fault): self = .fault(fault)
        }
    }
}

public enum PeerReplyOutcome: Sendable, Equatable {
    case success(ByteBuffer)
    case fault(String)
    case timedOut
    /// The cluster has no members on the destination relay (any more).
    case noMembers
    /// The member holding the request went away before answering.
    case memberLost
    /// Federation (Docs/federation.md): the request could not go on, for this reason
    /// (`networkUnreachable`, `notExported`), with a text for people.
    case refused(FailureReason, String)
}

/// How a tunnel build ended at the far relay.
public enum PeerTunnelOutcome: Sendable, Equatable {
    case built(farID: UInt64, chunkLimit: UInt64)
    case failed(String)
    /// The build could not go on, for this reason (no members, network unreachable, not
    /// exported), with a text for people.
    case refused(FailureReason, String)
}

/// Flags of a forwarded request or tunnel build.
public struct PeerRequestFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// The caller wants early, distinct failures (`skein/1`, Docs/skein-1.md) instead of waiting
    /// for members until the deadline.
    public static let failFast = PeerRequestFlags(rawValue: 1)
}

/// One frame of the relay-to-relay link, carried inside sealed records.
///
/// Layout: `[type u8][varint payload length][payload]`, where bit 7 of the type byte marks a
/// fragment that continues in a later frame of the same traffic class (Docs/peer-protocol.md §5).
public indirect enum PeerFrame: Sendable, Equatable {
    // Control class.
    /// The first frame each side sends: the address it listens on for peer links and gossip
    /// (`host:port`) and its relay name.
    case hello(address: String, name: String)
    case ping(token: UInt64)
    case pong(token: UInt64)
    case goodbye(reason: String)
    case membership(ByteBuffer)
    /// Gateway links only (Docs/federation.md §5): the sender's network and what it exports to
    /// the receiver's.
    case gateway(network: String, exports: [ExportRule])
    /// Gateway links only: every topic the sender's network subscribes to through this link,
    /// and every `skein/2` pattern (checked against the receiver's exports event by event).
    case interest(topics: [String], patterns: [String])
    /// Flow control: the sender has a receiver that cannot take more of `stream` now; the
    /// receiver of this frame pauses what feeds it there, for `leaseMillis` or until RELEASE.
    case hold(stream: PeerFlowStream, leaseMillis: UInt64)
    /// Flow control: the hold on `stream` is over.
    case release(stream: PeerFlowStream)
    // Interactive class.
    case request(id: UInt64, cluster: String, remainingMillis: UInt64, flags: PeerRequestFlags, body: ByteBuffer)
    case reply(id: UInt64, outcome: PeerReplyOutcome)
    case broadcast(cluster: String, body: ByteBuffer)
    case publish(topic: String, body: ByteBuffer)
    /// An event published to `topic` of the sender's network, delivered to the receiver's
    /// interest in it (federation, Docs/federation.md §5): on a gateway link, `topic` is bare; on
    /// a peer link, from a gateway to the relays of its network, it is `topic@network`.
    case event(topic: String, body: ByteBuffer)
    /// A REQUEST, REPLY, BROADCAST, PUBLISH, EVENT, SURVEY or SURVEY ANSWER with `skein/2`
    /// headers (Docs/skein-2.md): what its headers travel in between relays. Only those kinds
    /// are wrapped (`with`).
    case headed(headers: [Header], frame: PeerFrame)
    /// `skein/2` (Docs/skein-2.md, "Surveys"): ask every member of `cluster` on the receiving
    /// relay (or, sent to a gateway, in its network). Answers come back as SURVEY ANSWER, then
    /// one SURVEY END; a survey that cannot go on is answered with a REPLY `refused`.
    case survey(id: UInt64, cluster: String, remainingMillis: UInt64, body: ByteBuffer)
    /// One member's answer to survey `id`.
    case surveyAnswer(id: UInt64, outcome: ReplyOutcome)
    /// Survey `id` is over at the sender: what became of the members it asked.
    case surveyEnd(id: UInt64, tally: SurveyTally)
    case tunnelOpen(id: UInt64, cluster: String, remainingMillis: UInt64, flags: PeerRequestFlags)
    case tunnelConfirm(id: UInt64, outcome: PeerTunnelOutcome)
    case tunnelAllowance(id: UInt64, bytes: UInt64)
    // Bulk class.
    case tunnelClose(id: UInt64, reason: String)
    case tunnelData(id: UInt64, sizeOrContinuation: UInt64, chunk: ByteBuffer)

    public enum Kind: UInt8, Sendable, CaseIterable {
        case hello = 0x05
        case ping = 0x01
        case pong = 0x02
        case goodbye = 0x03
        case membership = 0x04
        case gateway = 0x06
        case interest = 0x07
        case hold = 0x08
        case release = 0x09
        case request = 0x10
        case reply = 0x11
        case broadcast = 0x12
        case publish = 0x13
        case event = 0x14
        case headed = 0x15
        case survey = 0x16
        case surveyAnswer = 0x17
        case surveyEnd = 0x18
        case tunnelOpen = 0x20
        case tunnelConfirm = 0x21
        case tunnelAllowance = 0x22
        case tunnelClose = 0x23
        case tunnelData = 0x30

        public var trafficClass: PeerTrafficClass {
            switch self {
            case .hello, .ping, .pong, .goodbye, .membership, .gateway, .interest, .hold, .release: .control
            case .request, .reply, .broadcast, .publish, .event, .headed, .survey, .surveyAnswer, .surveyEnd, .tunnelOpen,
                .tunnelConfirm, .tunnelAllowance:
                .interactive
            // A close travels behind the tunnel's data, never ahead of it.
            case .tunnelData, .tunnelClose: .bulk
            }
        }
    }

    public var kind: Kind {
        switch self {
        case .hello: .hello
        case .ping: .ping
        case .pong: .pong
        case .goodbye: .goodbye
        case .membership: .membership
        case .gateway: .gateway
        case .interest: .interest
        case .hold: .hold
        case .release: .release
        case .request: .request
        case .reply: .reply
        case .broadcast: .broadcast
        case .publish: .publish
        case .event: .event
        case .headed: .headed
        case .survey: .survey
        case .surveyAnswer: .surveyAnswer
        case .surveyEnd: .surveyEnd
        case .tunnelOpen: .tunnelOpen
        case .tunnelConfirm: .tunnelConfirm
        case .tunnelAllowance: .tunnelAllowance
        case .tunnelClose: .tunnelClose
        case .tunnelData: .tunnelData
        }
    }

    public var trafficClass: PeerTrafficClass { kind.trafficClass }

    /// The number of bytes `encodePayload` writes, so a frame's header can be written before its
    /// payload, in place.
    public var payloadSize: Int {
        switch self {
        case .hello(let address, let name):
            return fieldSize(address) + fieldSize(name)
        case .ping, .pong:
            return 8
        case .goodbye(let reason):
            return fieldSize(reason)
        case .membership(let bytes):
            return bytes.readableBytes
        case .gateway(let network, let exports):
            return fieldSize(network) + varintSize(UInt64(exports.count)) + exports.reduce(0) { $0 + 1 + fieldSize($1.pattern) }
        case .interest(let topics, let patterns):
            return varintSize(UInt64(topics.count)) + topics.reduce(0) { $0 + fieldSize($1) }
                + varintSize(UInt64(patterns.count)) + patterns.reduce(0) { $0 + fieldSize($1) }
        case .hold(let stream, let lease):
            return 1 + fieldSize(stream.name) + varintSize(lease)
        case .release(let stream):
            return 1 + fieldSize(stream.name)
        case .request(let id, let cluster, let remaining, _, let body):
            return varintSize(id) + fieldSize(cluster) + varintSize(remaining) + 1 + body.readableBytes
        case .reply(let id, let outcome):
            switch outcome {
            case .success(let body): return varintSize(id) + 1 + body.readableBytes
            case .fault(let fault): return varintSize(id) + 1 + fieldSize(fault)
            case .timedOut, .noMembers, .memberLost: return varintSize(id) + 1
            case .refused(_, let detail): return varintSize(id) + 2 + fieldSize(detail)
            }
        case .broadcast(let name, let body), .publish(let name, let body), .event(let name, let body):
            return fieldSize(name) + body.readableBytes
        case .headed(let headers, let frame):
            return headersSize(headers) + 1 + frame.payloadSize
        case .survey(let id, let cluster, let remaining, let body):
            return varintSize(id) + fieldSize(cluster) + varintSize(remaining) + body.readableBytes
        case .surveyAnswer(let id, let outcome):
            // REPLY's layout, outcomes 0 and 1 only.
            return PeerFrame.reply(id: id, outcome: PeerReplyOutcome(outcome)).payloadSize
        case .surveyEnd(let id, let tally):
            return varintSize(id) + varintSize(tally.asked) + varintSize(tally.answered) + varintSize(tally.faulted) + varintSize(tally.lost)
        case .tunnelOpen(let id, let cluster, let remaining, _):
            return varintSize(id) + fieldSize(cluster) + varintSize(remaining) + 1
        case .tunnelConfirm(let id, let outcome):
            switch outcome {
            case .built(let farID, let chunkLimit): return varintSize(id) + 1 + varintSize(farID) + varintSize(chunkLimit)
            case .failed(let reason): return varintSize(id) + 1 + fieldSize(reason)
            case .refused(_, let detail): return varintSize(id) + 2 + fieldSize(detail)
            }
        case .tunnelAllowance(let id, let bytes):
            return varintSize(id) + varintSize(bytes)
        case .tunnelClose(let id, let reason):
            return varintSize(id) + fieldSize(reason)
        case .tunnelData(let id, let size, let chunk):
            return varintSize(id) + varintSize(size) + chunk.readableBytes
        }
    }

    /// Appends the frame's payload (without the type byte and length) to `buffer`.
    public func encodePayload(into buffer: inout ByteBuffer) {
        if let written = encodeHot(into: &buffer, payloadSize: payloadSize, header: false), written { return }
        encodeCold(into: &buffer)
    }

    /// The frames that travel by the million (events, requests, replies, tunnel data) in one
    /// reservation of `buffer`, with their header if `header`; nil for every other kind.
    @inline(__always)
    private func encodeHot(into buffer: inout ByteBuffer, payloadSize: Int, header: Bool) -> Bool? {
        let headerSize = header ? 1 + varintSize(UInt64(payloadSize)) : 0
        let kind = self.kind
        switch self {
        case .publish(let name, let body), .broadcast(let name, let body), .event(let name, let body):
            buffer.writeRaw(count: headerSize + payloadSize) {
                if header { $0.byte(kind.rawValue); $0.varint(UInt64(payloadSize)) }
                $0.field(name)
                $0.bytes(body)
            }
        case .request(let id, let cluster, let remaining, let flags, let body):
            buffer.writeRaw(count: headerSize + payloadSize) {
                if header { $0.byte(kind.rawValue); $0.varint(UInt64(payloadSize)) }
                $0.varint(id)
                $0.field(cluster)
                $0.varint(remaining)
                $0.byte(flags.rawValue)
                $0.bytes(body)
            }
        case .reply(let id, .success(let body)):
            buffer.writeRaw(count: headerSize + payloadSize) {
                if header { $0.byte(kind.rawValue); $0.varint(UInt64(payloadSize)) }
                $0.varint(id)
                $0.byte(0)
                $0.bytes(body)
            }
        case .tunnelData(let id, let size, let chunk):
            buffer.writeRaw(count: headerSize + payloadSize) {
                if header { $0.byte(kind.rawValue); $0.varint(UInt64(payloadSize)) }
                $0.varint(id)
                $0.varint(size)
                $0.bytes(chunk)
            }
        default:
            return nil
        }
        return true
    }

    private func encodeCold(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let address, let name):
            buffer.writeField(address)
            buffer.writeField(name)
        case .ping(let token), .pong(let token):
            buffer.writeInteger(token)
        case .goodbye(let reason):
            buffer.writeField(reason)
        case .membership(let bytes):
            buffer.writeImmutableBuffer(bytes)
        case .gateway(let network, let exports):
            buffer.writeField(network)
            buffer.writeVarint(UInt64(exports.count))
            for rule in exports {
                buffer.writeInteger(rule.kinds.rawValue)
                buffer.writeField(rule.pattern)
            }
        case .interest(let topics, let patterns):
            buffer.writeVarint(UInt64(topics.count))
            for topic in topics { buffer.writeField(topic) }
            buffer.writeVarint(UInt64(patterns.count))
            for pattern in patterns { buffer.writeField(pattern) }
        case .hold(let stream, let lease):
            buffer.writeInteger(stream.kind.rawValue)
            buffer.writeField(stream.name)
            buffer.writeVarint(lease)
        case .release(let stream):
            buffer.writeInteger(stream.kind.rawValue)
            buffer.writeField(stream.name)
        case .request(let id, let cluster, let remaining, let flags, let body):
            buffer.writeVarint(id)
            buffer.writeField(cluster)
            buffer.writeVarint(remaining)
            buffer.writeInteger(flags.rawValue)
            buffer.writeImmutableBuffer(body)
        case .reply(let id, let outcome):
            buffer.writeVarint(id)
            switch outcome {
            case .success(let body):
                buffer.writeInteger(UInt8(0))
                buffer.writeImmutableBuffer(body)
            case .fault(let fault):
                buffer.writeInteger(UInt8(1))
                buffer.writeField(fault)
            case .timedOut:
                buffer.writeInteger(UInt8(2))
            case .noMembers:
                buffer.writeInteger(UInt8(3))
            case .memberLost:
                buffer.writeInteger(UInt8(4))
            case .refused(let reason, let detail):
                buffer.writeInteger(UInt8(5))
                buffer.writeInteger(reason.rawValue)
                buffer.writeField(detail)
            }
        case .broadcast(let name, let body), .publish(let name, let body), .event(let name, let body):
            buffer.writeField(name)
            buffer.writeImmutableBuffer(body)
        case .headed(let headers, let frame):
            buffer.writeHeaders(headers)
            buffer.writeInteger(frame.kind.rawValue)
            frame.encodePayload(into: &buffer)
        case .survey(let id, let cluster, let remaining, let body):
            buffer.writeVarint(id)
            buffer.writeField(cluster)
            buffer.writeVarint(remaining)
            buffer.writeImmutableBuffer(body)
        case .surveyAnswer(let id, let outcome):
            PeerFrame.reply(id: id, outcome: PeerReplyOutcome(outcome)).encodeCold(into: &buffer)
        case .surveyEnd(let id, let tally):
            buffer.writeVarint(id)
            buffer.writeSurveyTally(tally)
        case .tunnelOpen(let id, let cluster, let remaining, let flags):
            buffer.writeVarint(id)
            buffer.writeField(cluster)
            buffer.writeVarint(remaining)
            buffer.writeInteger(flags.rawValue)
        case .tunnelConfirm(let id, let outcome):
            buffer.writeVarint(id)
            switch outcome {
            case .built(let farID, let chunkLimit):
                buffer.writeInteger(UInt8(0))
                buffer.writeVarint(farID)
                buffer.writeVarint(chunkLimit)
            case .failed(let reason):
                buffer.writeInteger(UInt8(1))
                buffer.writeField(reason)
            case .refused(let reason, let detail):
                buffer.writeInteger(UInt8(2))
                buffer.writeInteger(reason.rawValue)
                buffer.writeField(detail)
            }
        case .tunnelAllowance(let id, let bytes):
            buffer.writeVarint(id)
            buffer.writeVarint(bytes)
        case .tunnelClose(let id, let reason):
            buffer.writeVarint(id)
            buffer.writeField(reason)
        case .tunnelData(let id, let size, let chunk):
            buffer.writeVarint(id)
            buffer.writeVarint(size)
            buffer.writeImmutableBuffer(chunk)
        }
    }

    /// Appends the whole frame (type, length, payload) to `buffer`, unfragmented.
    public func encode(into buffer: inout ByteBuffer) {
        encode(into: &buffer, payloadSize: payloadSize)
    }

    /// `encode(into:)` for a caller that already knows `payloadSize`.
    public func encode(into buffer: inout ByteBuffer, payloadSize: Int) {
        if let written = encodeHot(into: &buffer, payloadSize: payloadSize, header: true), written { return }
        buffer.writeInteger(kind.rawValue)
        buffer.writeVarint(UInt64(payloadSize))
        encodeCold(into: &buffer)
    }

    /// Decodes a whole (reassembled) payload of the given kind. Trailing bytes are an error:
    /// every field is accounted for.
    public static func decode(kind: Kind, payload: ByteBuffer, limits: WireLimits) throws(PeerFrameError) -> PeerFrame {
        var names = NameCache()
        return try decode(kind: kind, payload: payload, limits: limits, names: &names)
    }

    /// Decodes a payload, taking cluster and topic names from `names` when they repeat.
    public static func decode(kind: Kind, payload: ByteBuffer, limits: WireLimits, names: inout NameCache) throws(PeerFrameError) -> PeerFrame {
        var r = FieldReader(buffer: payload, limits: limits)
        do {
            let frame: PeerFrame?
            switch kind {
            case .hello:
                if let address = try r.string("address"), let name = try r.string("name") {
                    frame = .hello(address: address, name: name)
                } else {
                    frame = nil
                }
            case .ping:
                frame = r.buffer.readInteger(as: UInt64.self).map { .ping(token: $0) }
            case .pong:
                frame = r.buffer.readInteger(as: UInt64.self).map { .pong(token: $0) }
            case .goodbye:
                frame = try r.string("reason").map { .goodbye(reason: $0) }
            case .membership:
                frame = .membership(r.buffer.readSlice(length: r.buffer.readableBytes)!)
            case .gateway:
                frame = try Self.decodeGateway(&r)
            case .interest:
                frame = try Self.decodeInterest(&r)
            case .hold:
                if let stream = try Self.decodeStream(&r, of: kind, names: &names), let lease = try r.varint() {
                    frame = .hold(stream: stream, leaseMillis: lease)
                } else {
                    frame = nil
                }
            case .release:
                frame = try Self.decodeStream(&r, of: kind, names: &names).map { .release(stream: $0) }
            case .request:
                if let id = try r.varint(), let cluster = try r.name("cluster", cache: &names), let remaining = try r.varint(),
                    let flags = r.byte()
                {
                    frame = .request(id: id, cluster: cluster, remainingMillis: remaining, flags: PeerRequestFlags(rawValue: flags), body: r.rest())
                } else {
                    frame = nil
                }
            case .reply:
                if let id = try r.varint(), let tag = r.buffer.readInteger(as: UInt8.self) {
                    switch tag {
                    case 0: frame = .reply(id: id, outcome: .success(r.rest()))
                    case 1: frame = try r.string("fault").map { .reply(id: id, outcome: .fault($0)) }
                    case 2: frame = .reply(id: id, outcome: .timedOut)
                    case 3: frame = .reply(id: id, outcome: .noMembers)
                    case 4: frame = .reply(id: id, outcome: .memberLost)
                    case 5:
                        if let reason = r.byte(), let detail = try r.string("detail") {
                            frame = .reply(id: id, outcome: .refused(FailureReason(rawValue: reason), detail))
                        } else {
                            frame = nil
                        }
                    default: throw PeerFrameError.malformed(kind, "unknown reply outcome \(tag)")
                    }
                } else {
                    frame = nil
                }
            case .broadcast:
                frame = try r.name("cluster", cache: &names).map { .broadcast(cluster: $0, body: r.rest()) }
            case .publish:
                frame = try r.name("topic", cache: &names).map { .publish(topic: $0, body: r.rest()) }
            case .event:
                frame = try r.name("topic", cache: &names).map { .event(topic: $0, body: r.rest()) }
            case .headed:
                if let headers = try r.headers(), let tag = r.byte() {
                    guard let inner = Kind(rawValue: tag), Self.headable.contains(inner) else {
                        throw PeerFrameError.malformed(kind, "kind 0x\(String(tag, radix: 16)) does not carry headers")
                    }
                    frame = .headed(headers: headers, frame: try Self.decode(kind: inner, payload: r.rest(), limits: limits, names: &names))
                } else {
                    frame = nil
                }
            case .survey:
                if let id = try r.varint(), let cluster = try r.name("cluster", cache: &names), let remaining = try r.varint() {
                    frame = .survey(id: id, cluster: cluster, remainingMillis: remaining, body: r.rest())
                } else {
                    frame = nil
                }
            case .surveyAnswer:
                if let id = try r.varint(), let tag = r.byte() {
                    switch tag {
                    case 0: frame = .surveyAnswer(id: id, outcome: .success(r.rest()))
                    case 1: frame = try r.string("fault").map { .surveyAnswer(id: id, outcome: .fault($0)) }
                    default: throw PeerFrameError.malformed(kind, "unknown survey answer outcome \(tag)")
                    }
                } else {
                    frame = nil
                }
            case .surveyEnd:
                if let id = try r.varint(), let tally = try r.surveyTally() {
                    frame = .surveyEnd(id: id, tally: tally)
                } else {
                    frame = nil
                }
            case .tunnelOpen:
                if let id = try r.varint(), let cluster = try r.string("cluster"), let remaining = try r.varint(), let flags = r.byte() {
                    frame = .tunnelOpen(id: id, cluster: cluster, remainingMillis: remaining, flags: PeerRequestFlags(rawValue: flags))
                } else {
                    frame = nil
                }
            case .tunnelConfirm:
                if let id = try r.varint(), let tag = r.buffer.readInteger(as: UInt8.self) {
                    switch tag {
                    case 0:
                        if let farID = try r.varint(), let limit = try r.varint() {
                            frame = .tunnelConfirm(id: id, outcome: .built(farID: farID, chunkLimit: limit))
                        } else {
                            frame = nil
                        }
                    case 1: frame = try r.string("reason").map { .tunnelConfirm(id: id, outcome: .failed($0)) }
                    case 2:
                        if let reason = r.byte(), let detail = try r.string("detail") {
                            frame = .tunnelConfirm(id: id, outcome: .refused(FailureReason(rawValue: reason), detail))
                        } else {
                            frame = nil
                        }
                    default: throw PeerFrameError.malformed(kind, "unknown tunnel outcome \(tag)")
                    }
                } else {
                    frame = nil
                }
            case .tunnelAllowance:
                if let id = try r.varint(), let bytes = try r.varint() {
                    frame = .tunnelAllowance(id: id, bytes: bytes)
                } else {
                    frame = nil
                }
            case .tunnelClose:
                if let id = try r.varint(), let reason = try r.string("reason") {
                    frame = .tunnelClose(id: id, reason: reason)
                } else {
                    frame = nil
                }
            case .tunnelData:
                if let id = try r.varint(), let size = try r.varint() {
                    frame = .tunnelData(id: id, sizeOrContinuation: size, chunk: r.rest())
                } else {
                    frame = nil
                }
            }
            guard let frame else { throw PeerFrameError.malformed(kind, "payload ends inside a field") }
            guard r.buffer.readableBytes == 0 else {
                throw PeerFrameError.malformed(kind, "\(r.buffer.readableBytes) trailing bytes")
            }
            return frame
        } catch let error as WireError {
            throw .malformed(kind, error.description)
        } catch let error as PeerFrameError {
            throw error
        } catch {
            preconditionFailure("unexpected error \(error)")
        }
    }
}

extension PeerFrame {
    /// The kinds a HEADERS frame may wrap.
    public static let headable: Set<Kind> = [.request, .reply, .broadcast, .publish, .event, .survey, .surveyAnswer]

    /// This frame with `headers`: itself when there are none.
    public func with(_ headers: [Header]) -> PeerFrame {
        headers.isEmpty ? self : .headed(headers: headers, frame: self)
    }

    /// Most export rules or interest topics one frame may carry: a bound before allocation.
    public static let maxListEntries = 65_536

    static func decodeGateway(_ r: inout FieldReader) throws(WireError) -> PeerFrame? {
        guard let network = try r.string("network"), let count = try r.varint() else { return nil }
        guard count <= UInt64(min(maxListEntries, r.buffer.readableBytes / 2)) else {
            throw .fieldTooLarge(field: "export list", length: count, limit: min(maxListEntries, r.buffer.readableBytes / 2))
        }
        var exports: [ExportRule] = []
        exports.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let kinds = r.byte(), let pattern = try r.string("export pattern") else { return nil }
            exports.append(ExportRule(kinds: ExportKinds(rawValue: kinds), pattern: pattern))
        }
        return .gateway(network: network, exports: exports)
    }

    /// A HOLD's or RELEASE's stream: `u8 kind (0x12, 0x13 or 0x14), string name`.
    static func decodeStream(_ r: inout FieldReader, of kind: Kind, names: inout NameCache) throws -> PeerFlowStream? {
        guard let tag = r.byte(), let name = try r.name("name", cache: &names) else { return nil }
        guard let stream = PeerFlowStream(kind: tag, name: name) else {
            throw PeerFrameError.malformed(kind, "stream kind 0x\(String(tag, radix: 16)) is not BROADCAST, PUBLISH or EVENT")
        }
        return stream
    }

    static func decodeInterest(_ r: inout FieldReader) throws(WireError) -> PeerFrame? {
        guard let topics = try decodeNames(&r, "interest list", "topic"),
            let patterns = try decodeNames(&r, "interest patterns", "pattern")
        else { return nil }
        return .interest(topics: topics, patterns: patterns)
    }

    /// `varint count, count × string`, the count bounded before allocation.
    private static func decodeNames(_ r: inout FieldReader, _ list: String, _ field: String) throws(WireError) -> [String]? {
        guard let count = try r.varint() else { return nil }
        guard count <= UInt64(min(maxListEntries, r.buffer.readableBytes)) else {
            throw .fieldTooLarge(field: list, length: count, limit: min(maxListEntries, r.buffer.readableBytes))
        }
        var names: [String] = []
        names.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let name = try r.string(field) else { return nil }
            names.append(name)
        }
        return names
    }
}

/// Why a record's contents are not valid frames. Every case ends the link.
public enum PeerFrameError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownType(UInt8)
    case malformed(PeerFrame.Kind, String)
    case frameTooLarge(length: UInt64, limit: Int)
    /// A frame header or payload runs past the end of its record.
    case truncated
    /// A frame length is not a valid varint.
    case badLength
    /// A fragment of one kind continued with a frame of another kind in the same class.
    case fragmentMismatch(expected: PeerFrame.Kind, found: PeerFrame.Kind)

    public var description: String {
        switch self {
        case .unknownType(let t): "unknown peer frame type 0x\(String(t, radix: 16))"
        case .malformed(let kind, let why): "malformed \(kind) frame: \(why)"
        case .frameTooLarge(let length, let limit): "peer frame of \(length) bytes exceeds the limit of \(limit) bytes"
        case .truncated: "a peer frame runs past the end of its record"
        case .badLength: "a peer frame length is longer than 64 bits"
        case .fragmentMismatch(let expected, let found): "a \(expected) fragment was continued by a \(found) frame"
        }
    }
}

extension FieldReader {
    /// The rest of the payload: the last field of a frame needs no length of its own.
    @usableFromInline
    mutating func rest() -> ByteBuffer {
        buffer.readSlice(length: buffer.readableBytes)!
    }
}
