/// One membership change as it travels in gossip and push-pull (see `Docs/membership.md`).
/// An `alive` holds the member's identity by reference: queued for gossip it costs no copy of
/// the name and address (nor, with `metadata`, of the body: arrays are shared).
enum GossipUpdate: Equatable, Sendable {
    /// `metadata`: the encoded body of `metadataVersion`, carried inline when it is small (at
    /// most `MembershipSettings.maxInlineMetadataBytes`), so receivers need no pull.
    case alive(MemberIdentity, incarnation: UInt64, metadataVersion: UInt64, metadata: [UInt8]?)
    case suspect(id: NodeID, incarnation: UInt64, accuser: NodeID)
    case dead(id: NodeID, incarnation: UInt64, accuser: NodeID)
    case left(id: NodeID, incarnation: UInt64)

    /// `generation` orders processes that used the same address (higher is newer).
    static func alive(
        id: NodeID, incarnation: UInt64, name: String, address: MemberAddress, metadataVersion: UInt64, generation: UInt64,
        metadata: [UInt8]? = nil
    ) -> GossipUpdate {
        .alive(
            MemberIdentity(id: id, name: name, address: address, generation: generation), incarnation: incarnation,
            metadataVersion: metadataVersion, metadata: metadata)
    }

    var id: NodeID {
        switch self {
        case .alive(let identity, _, _, _): identity.id
        case .suspect(let id, _, _), .dead(let id, _, _), .left(let id, _): id
        }
    }
}

/// Messages carried in datagrams. A datagram is `u8 version | id sender | message*`; the first
/// messages are the primary ones (ping, ping-req, ack, nack), then piggybacked updates.
enum DatagramMessage: Equatable, Sendable {
    case ping(seq: UInt32, target: NodeID)
    case pingReq(seq: UInt32, target: NodeID, address: MemberAddress)
    case ack(seq: UInt32)
    case nack(seq: UInt32)
    case update(GossipUpdate)
}

/// Member record of a push-pull exchange.
struct StateRecord: Equatable, Sendable {
    var identity: MemberIdentity
    var status: MemberStatus
    var incarnation: UInt64
    var metadataVersion: UInt64
    /// The encoded body of `metadataVersion` when the sender includes small bodies (a join).
    var metadata: [UInt8]?

    init(identity: MemberIdentity, status: MemberStatus, incarnation: UInt64, metadataVersion: UInt64, metadata: [UInt8]?) {
        self.identity = identity
        self.status = status
        self.incarnation = incarnation
        self.metadataVersion = metadataVersion
        self.metadata = metadata
    }

    init(
        id: NodeID, name: String, address: MemberAddress, status: MemberStatus, incarnation: UInt64, metadataVersion: UInt64,
        generation: UInt64, metadata: [UInt8]? = nil
    ) {
        self.init(
            identity: MemberIdentity(id: id, name: name, address: address, generation: generation), status: status,
            incarnation: incarnation, metadataVersion: metadataVersion, metadata: metadata)
    }

    var id: NodeID { identity.id }
}

/// Messages over the reliable stream channel: `u8 version | u8 type | id sender | address sender | body`.
enum StreamMessage: Equatable, Sendable {
    /// `isRequest`: the receiver answers with its own state (`isRequest == false`).
    /// `withMetadata`: the records carry small metadata bodies inline, and a request asks for
    /// the same in the answer (a joiner knows no one's metadata yet).
    case pushPull(isRequest: Bool, records: [StateRecord], withMetadata: Bool = false)
    case metadataRequest(id: NodeID, version: UInt64)
    /// `body == nil`: the answering member does not hold that version.
    case metadataResponse(id: NodeID, version: UInt64, body: [UInt8]?)
    case ping(seq: UInt32, target: NodeID)
    case ack(seq: UInt32)
}

enum WireType {
    static let ping: UInt8 = 0x01
    static let pingReq: UInt8 = 0x02
    static let ack: UInt8 = 0x03
    static let nack: UInt8 = 0x04
    static let alive: UInt8 = 0x10
    static let suspect: UInt8 = 0x11
    static let dead: UInt8 = 0x12
    static let left: UInt8 = 0x13
    static let pushPull: UInt8 = 0x20
    static let metadataRequest: UInt8 = 0x21
    static let metadataResponse: UInt8 = 0x22
    static let streamPing: UInt8 = 0x23
    static let streamAck: UInt8 = 0x24
}

enum PushPullFlags {
    static let request: UInt8 = 0x01
    static let metadata: UInt8 = 0x02
}

enum Wire {
    static let datagramHeaderBytes = 1 + 16

    static func datagramHeader(sender: NodeID) -> [UInt8] {
        var writer = ByteWriter(capacity: 64)
        writer.u8(MembershipWireLimits.version)
        writer.id(sender)
        return writer.bytes
    }

    static func encode(_ message: DatagramMessage) -> [UInt8] {
        var writer = ByteWriter(capacity: 48)
        switch message {
        case .ping(let seq, let target):
            writer.u8(WireType.ping)
            writer.u32(seq)
            writer.id(target)
        case .pingReq(let seq, let target, let address):
            writer.u8(WireType.pingReq)
            writer.u32(seq)
            writer.id(target)
            writer.address(address)
        case .ack(let seq):
            writer.u8(WireType.ack)
            writer.u32(seq)
        case .nack(let seq):
            writer.u8(WireType.nack)
            writer.u32(seq)
        case .update(let update):
            encode(update, into: &writer)
        }
        return writer.bytes
    }

    /// Appends `update` to a datagram being built.
    static func encode(_ update: GossipUpdate, into bytes: inout [UInt8]) {
        var writer = ByteWriter(taking: &bytes)
        encode(update, into: &writer)
        bytes = writer.bytes
    }

    static func encode(_ update: GossipUpdate, into writer: inout ByteWriter) {
        switch update {
        case .alive(let identity, let incarnation, let metadataVersion, let metadata):
            writer.u8(WireType.alive)
            writer.id(identity.id)
            writer.varint(incarnation)
            writer.varint(metadataVersion)
            writer.u64(identity.generation)
            writer.address(identity.address)
            writer.string(identity.name)
            writer.inlineMetadata(metadata)
        case .suspect(let id, let incarnation, let accuser):
            writer.u8(WireType.suspect)
            writer.id(id)
            writer.varint(incarnation)
            writer.id(accuser)
        case .dead(let id, let incarnation, let accuser):
            writer.u8(WireType.dead)
            writer.id(id)
            writer.varint(incarnation)
            writer.id(accuser)
        case .left(let id, let incarnation):
            writer.u8(WireType.left)
            writer.id(id)
            writer.varint(incarnation)
        }
    }

    static func datagram(sender: NodeID, _ messages: [DatagramMessage]) -> [UInt8] {
        var bytes = datagramHeader(sender: sender)
        for message in messages { bytes += encode(message) }
        return bytes
    }

    /// Nil for anything malformed: wrong version, unknown type, truncation, bad UTF-8, trailing junk.
    static func decodeDatagram(_ bytes: [UInt8]) -> (sender: NodeID, messages: [DatagramMessage])? {
        var reader = ByteReader(bytes)
        guard reader.u8() == MembershipWireLimits.version, let sender = reader.id() else { return nil }
        var messages: [DatagramMessage] = []
        while !reader.isAtEnd {
            guard let type = reader.u8() else { return nil }
            switch type {
            case WireType.ping:
                guard let seq = reader.u32(), let target = reader.id() else { return nil }
                messages.append(.ping(seq: seq, target: target))
            case WireType.pingReq:
                guard let seq = reader.u32(), let target = reader.id(), let address = reader.address() else { return nil }
                messages.append(.pingReq(seq: seq, target: target, address: address))
            case WireType.ack:
                guard let seq = reader.u32() else { return nil }
                messages.append(.ack(seq: seq))
            case WireType.nack:
                guard let seq = reader.u32() else { return nil }
                messages.append(.nack(seq: seq))
            default:
                guard let update = decodeUpdate(type: type, &reader) else { return nil }
                messages.append(.update(update))
            }
        }
        return (sender, messages)
    }

    static func decodeUpdate(type: UInt8, _ reader: inout ByteReader) -> GossipUpdate? {
        switch type {
        case WireType.alive:
            guard let id = reader.id(), let incarnation = reader.varint(), let metadataVersion = reader.varint(),
                  let generation = reader.u64(), let address = reader.address(),
                  let name = reader.string(max: MembershipWireLimits.maxNameBytes),
                  let metadata = reader.inlineMetadata(max: reader.remaining)
            else { return nil }
            return .alive(
                id: id, incarnation: incarnation, name: name, address: address, metadataVersion: metadataVersion,
                generation: generation, metadata: metadata.isEmpty ? nil : metadata)
        case WireType.suspect:
            guard let id = reader.id(), let incarnation = reader.varint(), let accuser = reader.id() else { return nil }
            return .suspect(id: id, incarnation: incarnation, accuser: accuser)
        case WireType.dead:
            guard let id = reader.id(), let incarnation = reader.varint(), let accuser = reader.id() else { return nil }
            return .dead(id: id, incarnation: incarnation, accuser: accuser)
        case WireType.left:
            guard let id = reader.id(), let incarnation = reader.varint() else { return nil }
            return .left(id: id, incarnation: incarnation)
        default:
            return nil
        }
    }

    static func encodeStream(sender: NodeID, address: MemberAddress, _ message: StreamMessage) -> [UInt8] {
        var writer = ByteWriter(capacity: 64)
        writer.u8(MembershipWireLimits.version)
        switch message {
        case .pushPull: writer.u8(WireType.pushPull)
        case .metadataRequest: writer.u8(WireType.metadataRequest)
        case .metadataResponse: writer.u8(WireType.metadataResponse)
        case .ping: writer.u8(WireType.streamPing)
        case .ack: writer.u8(WireType.streamAck)
        }
        writer.id(sender)
        writer.address(address)
        switch message {
        case .pushPull(let isRequest, let records, let withMetadata):
            writer.u8((isRequest ? PushPullFlags.request : 0) | (withMetadata ? PushPullFlags.metadata : 0))
            writer.varint(UInt64(records.count))
            for record in records {
                writer.id(record.identity.id)
                writer.u8(statusCode(record.status))
                writer.varint(record.incarnation)
                writer.varint(record.metadataVersion)
                writer.u64(record.identity.generation)
                writer.address(record.identity.address)
                writer.string(record.identity.name)
                writer.inlineMetadata(record.metadata)
            }
        case .metadataRequest(let id, let version):
            writer.id(id)
            writer.varint(version)
        case .metadataResponse(let id, let version, let body):
            writer.id(id)
            writer.varint(version)
            if let body {
                writer.u8(1)
                writer.varint(UInt64(body.count))
                writer.raw(body)
            } else {
                writer.u8(0)
            }
        case .ping(let seq, let target):
            writer.u32(seq)
            writer.id(target)
        case .ack(let seq):
            writer.u32(seq)
        }
        return writer.bytes
    }

    /// Smallest encoded push-pull record: id, status, two 1-byte varints, generation, empty
    /// host, port, empty name, no metadata. Bounds the record count before anything is allocated.
    static let minimumRecordBytes = 16 + 1 + 1 + 1 + 8 + 1 + 2 + 1 + 1

    static func decodeStream(_ bytes: [UInt8], maxMetadataBytes: Int) -> (sender: NodeID, address: MemberAddress, message: StreamMessage)? {
        var reader = ByteReader(bytes)
        guard reader.u8() == MembershipWireLimits.version, let type = reader.u8(), let sender = reader.id(),
              let address = reader.address()
        else { return nil }
        let message: StreamMessage
        switch type {
        case WireType.pushPull:
            guard let flags = reader.u8(), flags & ~(PushPullFlags.request | PushPullFlags.metadata) == 0,
                  let count = reader.length(max: min(MembershipWireLimits.maxPushPullRecords, reader.remaining / minimumRecordBytes))
            else { return nil }
            var records: [StateRecord] = []
            records.reserveCapacity(count)
            for _ in 0..<count {
                guard let id = reader.id(), let code = reader.u8(), let status = status(code),
                      let incarnation = reader.varint(), let metadataVersion = reader.varint(),
                      let generation = reader.u64(), let memberAddress = reader.address(),
                      let name = reader.string(max: MembershipWireLimits.maxNameBytes),
                      let metadata = reader.inlineMetadata(max: maxMetadataBytes)
                else { return nil }
                records.append(StateRecord(
                    id: id, name: name, address: memberAddress, status: status, incarnation: incarnation,
                    metadataVersion: metadataVersion, generation: generation, metadata: metadata.isEmpty ? nil : metadata))
            }
            message = .pushPull(
                isRequest: flags & PushPullFlags.request != 0, records: records,
                withMetadata: flags & PushPullFlags.metadata != 0)
        case WireType.metadataRequest:
            guard let id = reader.id(), let version = reader.varint() else { return nil }
            message = .metadataRequest(id: id, version: version)
        case WireType.metadataResponse:
            guard let id = reader.id(), let version = reader.varint(), let found = reader.u8(), found <= 1 else { return nil }
            if found == 1 {
                guard let count = reader.length(max: maxMetadataBytes), let body = reader.raw(count) else { return nil }
                message = .metadataResponse(id: id, version: version, body: body)
            } else {
                message = .metadataResponse(id: id, version: version, body: nil)
            }
        case WireType.streamPing:
            guard let seq = reader.u32(), let target = reader.id() else { return nil }
            message = .ping(seq: seq, target: target)
        case WireType.streamAck:
            guard let seq = reader.u32() else { return nil }
            message = .ack(seq: seq)
        default:
            return nil
        }
        guard reader.isAtEnd else { return nil }
        return (sender, address, message)
    }

    static func statusCode(_ status: MemberStatus) -> UInt8 {
        switch status {
        case .alive: 0
        case .suspect: 1
        case .dead: 2
        case .left: 3
        }
    }

    static func status(_ code: UInt8) -> MemberStatus? {
        switch code {
        case 0: .alive
        case 1: .suspect
        case 2: .dead
        case 3: .left
        default: nil
        }
    }
}
