import NIOCore

/// Limits a decoder enforces before it allocates anything.
public struct WireLimits: Sendable, Equatable {
    /// Largest binary field (message, request, reply, event, chunk) accepted, in bytes.
    public var maxMessageSize: Int
    /// Largest string field (cluster, topic, fault, reason, magic, version) accepted, in bytes.
    public var maxStringSize: Int
    /// Largest tunnel chunk accepted (a relay sets its chunk limit here, so an oversized chunk
    /// is refused before it is buffered). Never more than `maxMessageSize` in effect.
    public var maxChunkSize: Int

    public init(maxMessageSize: Int = 32 << 20, maxStringSize: Int = 64 << 10, maxChunkSize: Int = .max) {
        self.maxMessageSize = maxMessageSize
        self.maxStringSize = maxStringSize
        self.maxChunkSize = maxChunkSize
    }
}

/// Why a byte stream is not a valid relay protocol stream. Every case ends the connection.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownOpcode(UInt8)
    case invalidBool(UInt8)
    case varintOverflow
    case fieldTooLarge(field: String, length: UInt64, limit: Int)
    case invalidUTF8(field: String)

    public var description: String {
        switch self {
        case .unknownOpcode(let op):
            "unknown opcode 0x\(String(op, radix: 16))"
        case .invalidBool(let byte):
            "invalid bool byte 0x\(String(byte, radix: 16))"
        case .varintOverflow:
            "varint longer than 64 bits"
        case .fieldTooLarge(let field, let length, let limit):
            "\(field) of \(length) bytes exceeds the limit of \(limit) bytes"
        case .invalidUTF8(let field):
            "\(field) is not valid UTF-8"
        }
    }
}

// MARK: - Primitive fields

extension ByteBuffer {
    /// Writes an unsigned LEB128 varint.
    @inlinable
    public mutating func writeVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            self.writeInteger(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        self.writeInteger(UInt8(truncatingIfNeeded: v))
    }

    @inlinable
    public mutating func writeBinary(_ value: ByteBuffer) {
        self.writeVarint(UInt64(value.readableBytes))
        self.writeImmutableBuffer(value)
    }

    @inlinable
    public mutating func writeField(_ value: String) {
        var value = value
        value.withUTF8 { utf8 in
            self.writeVarint(UInt64(utf8.count))
            self.writeBytes(utf8)
        }
    }

    @inlinable
    public mutating func writeBool(_ value: Bool) {
        self.writeInteger(value ? 1 : 0, as: UInt8.self)
    }
}

/// The number of bytes `writeVarint` uses for `value`.
@inlinable
public func varintSize(_ value: UInt64) -> Int {
    var n = 1
    var v = value >> 7
    while v != 0 {
        n += 1
        v >>= 7
    }
    return n
}

/// Reads fields from a copy of a buffer; `nil` means the frame is not complete yet.
///
/// Decoding is all-or-nothing: a frame is consumed from the caller's buffer only when every one
/// of its fields is present, so a decoder can be fed any split of the stream.
@usableFromInline
struct FieldReader {
    @usableFromInline var buffer: ByteBuffer
    @usableFromInline let limits: WireLimits

    @inlinable
    init(buffer: ByteBuffer, limits: WireLimits) {
        self.buffer = buffer
        self.limits = limits
    }

    @inlinable
    mutating func varint() throws(WireError) -> UInt64? {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        var index = buffer.readerIndex
        while true {
            guard let byte = buffer.getInteger(at: index, as: UInt8.self) else { return nil }
            index += 1
            if shift == 63 && byte > 1 { throw .varintOverflow }
            result |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { break }
            shift += 7
            if shift > 63 { throw .varintOverflow }
        }
        buffer.moveReaderIndex(to: index)
        return result
    }

    @inlinable
    mutating func byte() -> UInt8? {
        buffer.readInteger(as: UInt8.self)
    }

    @inlinable
    mutating func bool() throws(WireError) -> Bool? {
        guard let byte = buffer.readInteger(as: UInt8.self) else { return nil }
        switch byte {
        case 0: return false
        case 1: return true
        default: throw .invalidBool(byte)
        }
    }

    @inlinable
    mutating func binary(_ field: String, limit: Int? = nil) throws(WireError) -> ByteBuffer? {
        guard let length = try varint() else { return nil }
        let limit = Swift.min(limit ?? limits.maxMessageSize, limits.maxMessageSize)
        guard length <= UInt64(limit) else {
            throw .fieldTooLarge(field: field, length: length, limit: limit)
        }
        return buffer.readSlice(length: Int(length))
    }

    @inlinable
    mutating func string(_ field: String) throws(WireError) -> String? {
        guard let length = try varint() else { return nil }
        guard length <= UInt64(limits.maxStringSize) else {
            throw .fieldTooLarge(field: field, length: length, limit: limits.maxStringSize)
        }
        guard buffer.readableBytes >= Int(length) else { return nil }
        let view = buffer.readableBytesView.prefix(Int(length))
        guard let value = String(validating: view, as: UTF8.self) else { throw .invalidUTF8(field: field) }
        buffer.moveReaderIndex(forwardBy: Int(length))
        return value
    }
}

// MARK: - Binding → relay

extension ClientFrame {
    /// Decodes one frame from the front of `buffer`, consuming it; `nil` if more bytes are needed.
    public static func decode(from buffer: inout ByteBuffer, limits: WireLimits) throws(WireError) -> ClientFrame? {
        guard let op = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        guard let opcode = Opcode(rawValue: op) else { throw .unknownOpcode(op) }
        var r = FieldReader(buffer: buffer, limits: limits)
        r.buffer.moveReaderIndex(forwardBy: 1)
        let frame: ClientFrame
        switch opcode {
        case .initialize:
            guard let magic = try r.string("magic"), let version = try r.string("version"),
                let cluster = try r.string("cluster")
            else { return nil }
            frame = .initialize(magic: magic, version: version, cluster: cluster)
        case .deny, .requestFailed, .tunnelFailed, .refused:
            throw .unknownOpcode(op)  // These only travel relay → binding.
        case .close:
            frame = .close
        case .broadcast:
            guard let cluster = try r.string("cluster"), let message = try r.binary("broadcast message")
            else { return nil }
            frame = .broadcast(cluster: cluster, message: message)
        case .request:
            guard let id = try r.varint(), let cluster = try r.string("cluster"),
                let body = try r.binary("request"), let timeout = try r.varint()
            else { return nil }
            frame = .request(id: id, cluster: cluster, body: body, timeoutMillis: timeout)
        case .reply:
            guard let id = try r.varint(), let success = try r.bool() else { return nil }
            if success {
                guard let body = try r.binary("reply") else { return nil }
                frame = .reply(id: id, outcome: .success(body))
            } else {
                guard let fault = try r.string("fault") else { return nil }
                frame = .reply(id: id, outcome: .fault(fault))
            }
        case .subscribe:
            guard let topic = try r.string("topic") else { return nil }
            frame = .subscribe(topic: topic)
        case .unsubscribe:
            guard let topic = try r.string("topic") else { return nil }
            frame = .unsubscribe(topic: topic)
        case .publish:
            guard let topic = try r.string("topic"), let event = try r.binary("event") else { return nil }
            frame = .publish(topic: topic, event: event)
        case .tunnelInit:
            guard let id = try r.varint(), let cluster = try r.string("cluster"), let timeout = try r.varint()
            else { return nil }
            frame = .tunnelInit(tunnelID: id, cluster: cluster, timeoutMillis: timeout)
        case .tunnelConfirm:
            guard let build = try r.varint(), let id = try r.varint() else { return nil }
            frame = .tunnelConfirm(buildID: build, tunnelID: id)
        case .tunnelAllow:
            guard let id = try r.varint(), let bytes = try r.varint() else { return nil }
            frame = .tunnelAllow(tunnelID: id, bytes: bytes)
        case .tunnelTransfer:
            guard let id = try r.varint(), let size = try r.varint(), let chunk = try r.binary("tunnel chunk", limit: limits.maxChunkSize)
            else { return nil }
            frame = .tunnelTransfer(tunnelID: id, sizeOrContinuation: size, chunk: chunk)
        case .tunnelClose:
            guard let id = try r.varint() else { return nil }
            frame = .tunnelClose(tunnelID: id)
        }
        buffer = r.buffer
        return frame
    }

    /// Appends the frame's bytes to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(opcode.rawValue)
        switch self {
        case .initialize(let magic, let version, let cluster):
            buffer.writeField(magic)
            buffer.writeField(version)
            buffer.writeField(cluster)
        case .close:
            break
        case .broadcast(let cluster, let message):
            buffer.writeField(cluster)
            buffer.writeBinary(message)
        case .request(let id, let cluster, let body, let timeout):
            buffer.writeVarint(id)
            buffer.writeField(cluster)
            buffer.writeBinary(body)
            buffer.writeVarint(timeout)
        case .reply(let id, let outcome):
            buffer.writeVarint(id)
            switch outcome {
            case .success(let body):
                buffer.writeBool(true)
                buffer.writeBinary(body)
            case .fault(let fault):
                buffer.writeBool(false)
                buffer.writeField(fault)
            }
        case .subscribe(let topic), .unsubscribe(let topic):
            buffer.writeField(topic)
        case .publish(let topic, let event):
            buffer.writeField(topic)
            buffer.writeBinary(event)
        case .tunnelInit(let id, let cluster, let timeout):
            buffer.writeVarint(id)
            buffer.writeField(cluster)
            buffer.writeVarint(timeout)
        case .tunnelConfirm(let build, let id):
            buffer.writeVarint(build)
            buffer.writeVarint(id)
        case .tunnelAllow(let id, let bytes):
            buffer.writeVarint(id)
            buffer.writeVarint(bytes)
        case .tunnelTransfer(let id, let size, let chunk):
            buffer.writeVarint(id)
            buffer.writeVarint(size)
            buffer.writeBinary(chunk)
        case .tunnelClose(let id):
            buffer.writeVarint(id)
        }
    }
}

// MARK: - Relay → binding

extension RelayFrame {
    /// Decodes one frame from the front of `buffer`, consuming it; `nil` if more bytes are needed.
    public static func decode(from buffer: inout ByteBuffer, limits: WireLimits) throws(WireError) -> RelayFrame? {
        guard let op = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        guard let opcode = Opcode(rawValue: op) else { throw .unknownOpcode(op) }
        var r = FieldReader(buffer: buffer, limits: limits)
        r.buffer.moveReaderIndex(forwardBy: 1)
        let frame: RelayFrame
        switch opcode {
        case .initialize:
            guard let magic = try r.string("magic"), let version = try r.string("version") else { return nil }
            frame = .initialize(magic: magic, version: version)
        case .deny:
            guard let magic = try r.string("magic"), let reason = try r.string("reason") else { return nil }
            frame = .deny(magic: magic, reason: reason)
        case .close:
            guard let reason = try r.string("reason") else { return nil }
            frame = .close(reason: reason)
        case .broadcast:
            guard let message = try r.binary("broadcast message") else { return nil }
            frame = .broadcast(message: message)
        case .request:
            guard let id = try r.varint(), let body = try r.binary("request"), let timeout = try r.varint()
            else { return nil }
            frame = .request(id: id, body: body, timeoutMillis: timeout)
        case .reply:
            guard let id = try r.varint(), let timedOut = try r.bool() else { return nil }
            if timedOut {
                frame = .reply(id: id, outcome: .timedOut)
            } else {
                guard let success = try r.bool() else { return nil }
                if success {
                    guard let body = try r.binary("reply") else { return nil }
                    frame = .reply(id: id, outcome: .success(body))
                } else {
                    guard let fault = try r.string("fault") else { return nil }
                    frame = .reply(id: id, outcome: .fault(fault))
                }
            }
        case .subscribe, .unsubscribe:
            throw .unknownOpcode(op)  // Only travel binding → relay.
        case .publish:
            guard let topic = try r.string("topic"), let event = try r.binary("event") else { return nil }
            frame = .publish(topic: topic, event: event)
        case .tunnelInit:
            guard let build = try r.varint(), let limit = try r.varint() else { return nil }
            frame = .tunnelInit(buildID: build, chunkLimit: limit)
        case .tunnelConfirm:
            guard let id = try r.varint(), let timedOut = try r.bool() else { return nil }
            if timedOut {
                frame = .tunnelConfirm(tunnelID: id, outcome: .timedOut)
            } else {
                guard let limit = try r.varint() else { return nil }
                frame = .tunnelConfirm(tunnelID: id, outcome: .built(chunkLimit: limit))
            }
        case .tunnelAllow:
            guard let id = try r.varint(), let bytes = try r.varint() else { return nil }
            frame = .tunnelAllow(tunnelID: id, bytes: bytes)
        case .tunnelTransfer:
            guard let id = try r.varint(), let size = try r.varint(), let chunk = try r.binary("tunnel chunk", limit: limits.maxChunkSize)
            else { return nil }
            frame = .tunnelTransfer(tunnelID: id, sizeOrContinuation: size, chunk: chunk)
        case .tunnelClose:
            guard let id = try r.varint(), let reason = try r.string("reason") else { return nil }
            frame = .tunnelClose(tunnelID: id, reason: reason)
        case .requestFailed:
            guard let id = try r.varint(), let reason = r.byte(), let detail = try r.string("detail") else { return nil }
            frame = .requestFailed(id: id, reason: FailureReason(rawValue: reason), detail: detail)
        case .tunnelFailed:
            guard let id = try r.varint(), let reason = r.byte(), let detail = try r.string("detail") else { return nil }
            frame = .tunnelFailed(tunnelID: id, reason: FailureReason(rawValue: reason), detail: detail)
        case .refused:
            guard let refusedOp = r.byte(), let name = try r.string("name"), let reason = r.byte(),
                let detail = try r.string("detail")
            else { return nil }
            frame = .refused(opcode: refusedOp, name: name, reason: FailureReason(rawValue: reason), detail: detail)
        }
        buffer = r.buffer
        return frame
    }

    /// Appends the frame's bytes to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(opcode.rawValue)
        switch self {
        case .initialize(let magic, let version):
            buffer.writeField(magic)
            buffer.writeField(version)
        case .deny(let magic, let reason):
            buffer.writeField(magic)
            buffer.writeField(reason)
        case .close(let reason):
            buffer.writeField(reason)
        case .broadcast(let message):
            buffer.writeBinary(message)
        case .request(let id, let body, let timeout):
            buffer.writeVarint(id)
            buffer.writeBinary(body)
            buffer.writeVarint(timeout)
        case .reply(let id, let outcome):
            buffer.writeVarint(id)
            switch outcome {
            case .timedOut:
                buffer.writeBool(true)
            case .success(let body):
                buffer.writeBool(false)
                buffer.writeBool(true)
                buffer.writeBinary(body)
            case .fault(let fault):
                buffer.writeBool(false)
                buffer.writeBool(false)
                buffer.writeField(fault)
            }
        case .publish(let topic, let event):
            buffer.writeField(topic)
            buffer.writeBinary(event)
        case .tunnelInit(let build, let limit):
            buffer.writeVarint(build)
            buffer.writeVarint(limit)
        case .tunnelConfirm(let id, let outcome):
            buffer.writeVarint(id)
            switch outcome {
            case .timedOut:
                buffer.writeBool(true)
            case .built(let limit):
                buffer.writeBool(false)
                buffer.writeVarint(limit)
            }
        case .tunnelAllow(let id, let bytes):
            buffer.writeVarint(id)
            buffer.writeVarint(bytes)
        case .tunnelTransfer(let id, let size, let chunk):
            buffer.writeVarint(id)
            buffer.writeVarint(size)
            buffer.writeBinary(chunk)
        case .tunnelClose(let id, let reason):
            buffer.writeVarint(id)
            buffer.writeField(reason)
        case .requestFailed(let id, let reason, let detail), .tunnelFailed(let id, let reason, let detail):
            buffer.writeVarint(id)
            buffer.writeInteger(reason.rawValue)
            buffer.writeField(detail)
        case .refused(let refusedOp, let name, let reason, let detail):
            buffer.writeInteger(refusedOp)
            buffer.writeField(name)
            buffer.writeInteger(reason.rawValue)
            buffer.writeField(detail)
        }
    }
}
