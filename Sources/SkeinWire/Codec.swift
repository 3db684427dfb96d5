import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Limits a decoder enforces before it allocates anything.
public struct WireLimits: Sendable, Equatable {
    /// Largest binary field (message, request, reply, event, chunk) accepted, in bytes.
    public var maxMessageSize: Int
    /// Largest string field (cluster, topic, fault, reason, magic, version) accepted, in bytes.
    public var maxStringSize: Int
    /// Largest tunnel chunk accepted (a relay sets its chunk limit here, so an oversized chunk
    /// is refused before it is buffered). Never more than `maxMessageSize` in effect.
    public var maxChunkSize: Int
    /// Most entries in one frame's headers (`skein/2`).
    public var maxHeaders: Int
    /// Largest encoded headers block of one frame, its count included (`skein/2`).
    public var maxHeaderBytes: Int

    public init(
        maxMessageSize: Int = 32 << 20, maxStringSize: Int = 64 << 10, maxChunkSize: Int = .max,
        maxHeaders: Int = 64, maxHeaderBytes: Int = 16 << 10
    ) {
        self.maxMessageSize = maxMessageSize
        self.maxStringSize = maxStringSize
        self.maxChunkSize = maxChunkSize
        self.maxHeaders = maxHeaders
        self.maxHeaderBytes = maxHeaderBytes
    }
}

/// Why a byte stream is not a valid relay protocol stream. Every case ends the connection.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    case unknownOpcode(UInt8)
    case invalidBool(UInt8)
    case varintOverflow
    case fieldTooLarge(field: String, length: UInt64, limit: Int)
    case invalidUTF8(field: String)
    case tooManyHeaders(count: UInt64, limit: Int)
    case emptyHeaderKey

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
        case .tooManyHeaders(let count, let limit):
            "\(count) headers exceed the limit of \(limit)"
        case .emptyHeaderKey:
            "a header key is empty"
        }
    }
}

// MARK: - Primitive fields

/// Writes fields into memory already reserved in a `ByteBuffer` (`writeRaw`): the encoders' fast
/// path, one capacity check per frame. Writing a frame field by field through `ByteBuffer`'s own
/// methods costs a call, a uniqueness check and an exclusivity check per field, and dominated the
/// cost of encoding small frames.
@usableFromInline package struct RawWriter {
    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline var offset = 0

    @inlinable init(base: UnsafeMutableRawPointer) { self.base = base }

    @inlinable package mutating func byte(_ value: UInt8) {
        base.storeBytes(of: value, toByteOffset: offset, as: UInt8.self)
        offset += 1
    }

    @inlinable package mutating func varint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            byte(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        byte(UInt8(truncatingIfNeeded: v))
    }

    @inlinable package mutating func integer(_ value: UInt64) {
        withUnsafeBytes(of: value.bigEndian) { bytes($0) }
    }

    @inlinable package mutating func bytes(_ source: UnsafeRawBufferPointer) {
        if let from = source.baseAddress, source.count > 0 {
            (base + offset).copyMemory(from: from, byteCount: source.count)
        }
        offset += source.count
    }

    /// The readable bytes of `buffer`, without a length.
    @inlinable package mutating func bytes(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { bytes($0) }
    }

    /// A string field: varint length, then the UTF-8.
    @inlinable package mutating func field(_ value: String) {
        let written: Bool? = value.utf8.withContiguousStorageIfAvailable { utf8 -> Bool in
            varint(UInt64(utf8.count))
            bytes(UnsafeRawBufferPointer(utf8))
            return true
        }
        if written == nil {
            let utf8 = Array(value.utf8)
            varint(UInt64(utf8.count))
            utf8.withUnsafeBytes { bytes($0) }
        }
    }

    /// A binary field: varint length, then the bytes.
    @inlinable package mutating func binary(_ value: ByteBuffer) {
        varint(UInt64(value.readableBytes))
        bytes(value)
    }
}

// `package`, not `public`: an extension of ByteBuffer is seen by everyone who loads this module,
// the binding's users included (`import Skein`), and these are codec internals.
extension ByteBuffer {
    /// Reserves exactly `count` bytes and lets `body` fill all of them with a `RawWriter`.
    @inlinable
    package mutating func writeRaw(count: Int, _ body: (inout RawWriter) -> Void) {
        writeWithUnsafeMutableBytes(minimumWritableBytes: count) { memory in
            var writer = RawWriter(base: memory.baseAddress!)
            body(&writer)
            precondition(writer.offset == count, "a frame encoder wrote \(writer.offset) bytes, not \(count)")
            return count
        }
    }

    /// Writes an unsigned LEB128 varint.
    @inlinable
    package mutating func writeVarint(_ value: UInt64) {
        writeRaw(count: varintSize(value)) { $0.varint(value) }
    }

    @inlinable
    package mutating func writeBinary(_ value: ByteBuffer) {
        writeRaw(count: varintSize(UInt64(value.readableBytes)) + value.readableBytes) { $0.binary(value) }
    }

    @inlinable
    package mutating func writeField(_ value: String) {
        writeRaw(count: fieldSize(value)) { $0.field(value) }
    }

    @inlinable
    package mutating func writeBool(_ value: Bool) {
        self.writeInteger(value ? 1 : 0, as: UInt8.self)
    }
}

/// Bytes of a string field: its varint length and its UTF-8.
@inlinable
package func fieldSize(_ value: String) -> Int {
    let count = value.utf8.count
    return varintSize(UInt64(count)) + count
}

/// Bytes of a binary field: its varint length and its bytes.
@inlinable
package func binarySize(_ value: ByteBuffer) -> Int {
    varintSize(UInt64(value.readableBytes)) + value.readableBytes
}

/// The number of bytes `writeVarint` uses for `value`.
@inlinable
package func varintSize(_ value: UInt64) -> Int {
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
        guard let value = validatedString(count: Int(length)) else { throw .invalidUTF8(field: field) }
        buffer.moveReaderIndex(forwardBy: Int(length))
        return value
    }

    /// The next `count` bytes as a String, or nil if they are not valid UTF-8. Decoding through
    /// a buffer pointer is specialized (`String(validating:)` over a ByteBufferView went through
    /// unspecialized generic code and the runtime's metadata cache for every field): the bytes
    /// are valid exactly when the decoded string's UTF-8, with any repairs, is the same bytes.
    @inlinable
    func validatedString(count: Int) -> String? {
        buffer.withUnsafeReadableBytes { raw -> String? in
            let bytes = UnsafeBufferPointer(rebasing: raw.assumingMemoryBound(to: UInt8.self)[0..<count])
            var value = String(decoding: bytes, as: UTF8.self)
            let same = value.withUTF8 { utf8 in
                utf8.count == count && (count == 0 || memcmp(utf8.baseAddress!, bytes.baseAddress!, count) == 0)
            }
            return same ? value : nil
        }
    }
}

/// The last few names (topics, clusters) decoded on one stream, so a flood of frames to one
/// topic validates and allocates its name once rather than once per frame. Only short names are
/// kept (at most `maxNameBytes`), so a stream's cache stays small whatever it sends.
public struct NameCache: Sendable {
    public static let capacity = 4
    public static let maxNameBytes = 256
    @usableFromInline var entries: [(bytes: [UInt8], name: String)] = []
    @usableFromInline var next = 0

    public init() {}

    /// The cached name whose UTF-8 is exactly `bytes`, if any.
    @inlinable
    func lookup(_ bytes: UnsafeRawBufferPointer) -> String? {
        for entry in entries where entry.bytes.count == bytes.count {
            let same = entry.bytes.withUnsafeBytes { stored in
                bytes.count == 0 || memcmp(stored.baseAddress!, bytes.baseAddress!, bytes.count) == 0
            }
            if same { return entry.name }
        }
        return nil
    }

    @inlinable
    mutating func insert(_ bytes: UnsafeRawBufferPointer, _ name: String) {
        guard bytes.count <= Self.maxNameBytes else { return }
        if entries.count < Self.capacity {
            entries.append((Array(bytes), name))
        } else {
            entries[next] = (Array(bytes), name)
            next = (next + 1) % Self.capacity
        }
    }
}

extension FieldReader {
    /// A string field that names something (topic, cluster): looked up in `cache` first, and
    /// validated as UTF-8 only when it is not there.
    @inlinable
    mutating func name(_ field: String, cache: inout NameCache) throws(WireError) -> String? {
        guard let length = try varint() else { return nil }
        guard length <= UInt64(limits.maxStringSize) else {
            throw .fieldTooLarge(field: field, length: length, limit: limits.maxStringSize)
        }
        let count = Int(length)
        guard buffer.readableBytes >= count else { return nil }
        let found = buffer.withUnsafeReadableBytes { cache.lookup(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        if let found {
            buffer.moveReaderIndex(forwardBy: count)
            return found
        }
        guard let value = validatedString(count: count) else { throw .invalidUTF8(field: field) }
        buffer.withUnsafeReadableBytes { cache.insert(UnsafeRawBufferPointer(rebasing: $0[0..<count]), value) }
        buffer.moveReaderIndex(forwardBy: count)
        return value
    }
}

// MARK: - Headers (`skein/2`)

extension FieldReader {
    /// `varint count, count × (string key, string value)`, within `maxHeaders` entries and
    /// `maxHeaderBytes` encoded (counted from the count's first byte); a key is never empty.
    @inlinable
    mutating func headers() throws(WireError) -> [Header]? {
        let start = buffer.readerIndex
        guard let count = try varint() else { return nil }
        guard count <= UInt64(limits.maxHeaders) else {
            throw .tooManyHeaders(count: count, limit: limits.maxHeaders)
        }
        if count == 0 { return [] }
        var headers: [Header] = []
        headers.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let key = try string("header key") else { return nil }
            guard !key.isEmpty else { throw .emptyHeaderKey }
            guard let value = try string("header value") else { return nil }
            headers.append(Header(key, value))
            let used = buffer.readerIndex - start
            guard used <= limits.maxHeaderBytes else {
                throw .fieldTooLarge(field: "headers", length: UInt64(used), limit: limits.maxHeaderBytes)
            }
        }
        return headers
    }
}

/// Bytes of a headers block.
@inlinable
package func headersSize(_ headers: [Header]) -> Int {
    var size = varintSize(UInt64(headers.count))
    for header in headers { size += fieldSize(header.key) + fieldSize(header.value) }
    return size
}

extension ByteBuffer {
    @inlinable
    package mutating func writeHeaders(_ headers: [Header]) {
        writeVarint(UInt64(headers.count))
        for header in headers {
            writeField(header.key)
            writeField(header.value)
        }
    }
}

// MARK: - Outcomes, shared by REPLY and HREPLY

extension FieldReader {
    /// A member's answer (binding → relay): `bool success`, then `binary reply` or `string fault`.
    @inlinable
    mutating func replyOutcome() throws(WireError) -> ReplyOutcome? {
        guard let success = try bool() else { return nil }
        if success { return try binary("reply").map { .success($0) } }
        return try string("fault").map { .fault($0) }
    }

    /// A request's end (relay → binding): `bool timedOut`, and if not, a member's answer.
    @inlinable
    mutating func requestOutcome() throws(WireError) -> RequestOutcome? {
        guard let timedOut = try bool() else { return nil }
        if timedOut { return .timedOut }
        switch try replyOutcome() {
        case .success(let body)?: return .success(body)
        case .fault(let fault)?: return .fault(fault)
        case nil: return nil
        }
    }
}

extension FieldReader {
    /// SURVEY END's counts, shared by the client frame and the peer frame.
    mutating func surveyTally() throws(WireError) -> SurveyTally? {
        guard let asked = try varint(), let answered = try varint(), let faulted = try varint(), let lost = try varint()
        else { return nil }
        return SurveyTally(asked: asked, answered: answered, faulted: faulted, lost: lost)
    }
}

extension ByteBuffer {
    /// SURVEY END's counts: four varints.
    package mutating func writeSurveyTally(_ tally: SurveyTally) {
        writeVarint(tally.asked)
        writeVarint(tally.answered)
        writeVarint(tally.faulted)
        writeVarint(tally.lost)
    }

    @inlinable
    package mutating func writeReplyOutcome(_ outcome: ReplyOutcome) {
        switch outcome {
        case .success(let body):
            writeBool(true)
            writeBinary(body)
        case .fault(let fault):
            writeBool(false)
            writeField(fault)
        }
    }

    @inlinable
    package mutating func writeRequestOutcome(_ outcome: RequestOutcome) {
        switch outcome {
        case .timedOut: writeBool(true)
        case .success(let body):
            writeBool(false)
            writeReplyOutcome(.success(body))
        case .fault(let fault):
            writeBool(false)
            writeReplyOutcome(.fault(fault))
        }
    }
}

// MARK: - Binding → relay

extension ClientFrame {
    /// Decodes one frame from the front of `buffer`, consuming it; `nil` if more bytes are needed.
    public static func decode(from buffer: inout ByteBuffer, limits: WireLimits) throws(WireError) -> ClientFrame? {
        var names = NameCache()
        return try decode(from: &buffer, limits: limits, names: &names)
    }

    /// Decodes one frame, taking cluster and topic names from `names` when they repeat.
    public static func decode(from buffer: inout ByteBuffer, limits: WireLimits, names: inout NameCache) throws(WireError) -> ClientFrame? {
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
        case .deny, .requestFailed, .tunnelFailed, .refused, .event, .surveyAnswer, .surveyEnd:
            throw .unknownOpcode(op)  // These only travel relay → binding.
        case .survey:
            guard let id = try r.varint(), let cluster = try r.name("cluster", cache: &names), let headers = try r.headers(),
                let body = try r.binary("survey"), let timeout = try r.varint()
            else { return nil }
            frame = .survey(id: id, cluster: cluster, headers: headers, body: body, timeoutMillis: timeout)
        case .hbroadcast:
            guard let cluster = try r.name("cluster", cache: &names), let headers = try r.headers(),
                let message = try r.binary("broadcast message")
            else { return nil }
            frame = .hbroadcast(cluster: cluster, headers: headers, message: message)
        case .hrequest:
            guard let id = try r.varint(), let cluster = try r.name("cluster", cache: &names), let headers = try r.headers(),
                let body = try r.binary("request"), let timeout = try r.varint()
            else { return nil }
            frame = .hrequest(id: id, cluster: cluster, headers: headers, body: body, timeoutMillis: timeout)
        case .hreply:
            guard let id = try r.varint(), let headers = try r.headers(), let outcome = try r.replyOutcome() else { return nil }
            frame = .hreply(id: id, headers: headers, outcome: outcome)
        case .hpublish:
            guard let topic = try r.name("topic", cache: &names), let headers = try r.headers(), let event = try r.binary("event")
            else { return nil }
            frame = .hpublish(topic: topic, headers: headers, event: event)
        case .close:
            frame = .close
        case .broadcast:
            guard let cluster = try r.name("cluster", cache: &names), let message = try r.binary("broadcast message")
            else { return nil }
            frame = .broadcast(cluster: cluster, message: message)
        case .request:
            guard let id = try r.varint(), let cluster = try r.name("cluster", cache: &names),
                let body = try r.binary("request"), let timeout = try r.varint()
            else { return nil }
            frame = .request(id: id, cluster: cluster, body: body, timeoutMillis: timeout)
        case .reply:
            guard let id = try r.varint(), let outcome = try r.replyOutcome() else { return nil }
            frame = .reply(id: id, outcome: outcome)
        case .subscribe:
            guard let topic = try r.string("topic") else { return nil }
            frame = .subscribe(topic: topic)
        case .unsubscribe:
            guard let topic = try r.string("topic") else { return nil }
            frame = .unsubscribe(topic: topic)
        case .publish:
            guard let topic = try r.name("topic", cache: &names), let event = try r.binary("event") else { return nil }
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
        // The frames a binding sends by the million are written in one reservation each.
        switch self {
        case .publish(let topic, let event):
            buffer.writeRaw(count: 1 + fieldSize(topic) + binarySize(event)) {
                $0.byte(Opcode.publish.rawValue)
                $0.field(topic)
                $0.binary(event)
            }
            return
        case .request(let id, let cluster, let body, let timeout):
            buffer.writeRaw(count: 1 + varintSize(id) + fieldSize(cluster) + binarySize(body) + varintSize(timeout)) {
                $0.byte(Opcode.request.rawValue)
                $0.varint(id)
                $0.field(cluster)
                $0.binary(body)
                $0.varint(timeout)
            }
            return
        case .reply(let id, .success(let body)):
            buffer.writeRaw(count: 1 + varintSize(id) + 1 + binarySize(body)) {
                $0.byte(Opcode.reply.rawValue)
                $0.varint(id)
                $0.byte(1)  // success
                $0.binary(body)
            }
            return
        default:
            break
        }
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
            buffer.writeReplyOutcome(outcome)
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
        case .hbroadcast(let cluster, let headers, let message):
            buffer.writeField(cluster)
            buffer.writeHeaders(headers)
            buffer.writeBinary(message)
        case .hrequest(let id, let cluster, let headers, let body, let timeout):
            buffer.writeVarint(id)
            buffer.writeField(cluster)
            buffer.writeHeaders(headers)
            buffer.writeBinary(body)
            buffer.writeVarint(timeout)
        case .hreply(let id, let headers, let outcome):
            buffer.writeVarint(id)
            buffer.writeHeaders(headers)
            buffer.writeReplyOutcome(outcome)
        case .hpublish(let topic, let headers, let event):
            buffer.writeField(topic)
            buffer.writeHeaders(headers)
            buffer.writeBinary(event)
        case .survey(let id, let cluster, let headers, let body, let timeout):
            buffer.writeVarint(id)
            buffer.writeField(cluster)
            buffer.writeHeaders(headers)
            buffer.writeBinary(body)
            buffer.writeVarint(timeout)
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
            guard let id = try r.varint(), let outcome = try r.requestOutcome() else { return nil }
            frame = .reply(id: id, outcome: outcome)
        case .subscribe, .unsubscribe, .hpublish, .survey:
            throw .unknownOpcode(op)  // Only travel binding → relay.
        case .surveyAnswer:
            guard let id = try r.varint(), let headers = try r.headers(), let outcome = try r.replyOutcome() else { return nil }
            frame = .surveyAnswer(id: id, headers: headers, outcome: outcome)
        case .surveyEnd:
            guard let id = try r.varint(), let tally = try r.surveyTally() else { return nil }
            frame = .surveyEnd(id: id, tally: tally)
        case .hbroadcast:
            guard let headers = try r.headers(), let message = try r.binary("broadcast message") else { return nil }
            frame = .hbroadcast(headers: headers, message: message)
        case .hrequest:
            guard let id = try r.varint(), let headers = try r.headers(), let body = try r.binary("request"), let timeout = try r.varint()
            else { return nil }
            frame = .hrequest(id: id, headers: headers, body: body, timeoutMillis: timeout)
        case .hreply:
            guard let id = try r.varint(), let headers = try r.headers(), let outcome = try r.requestOutcome() else { return nil }
            frame = .hreply(id: id, headers: headers, outcome: outcome)
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
        case .event:
            guard let subscription = try r.string("subscription"), let topic = try r.string("topic"),
                let headers = try r.headers(), let event = try r.binary("event")
            else { return nil }
            frame = .event(subscription: subscription, topic: topic, headers: headers, event: event)
        }
        buffer = r.buffer
        return frame
    }

    /// Appends the frame's bytes to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        // The frames a relay sends by the million are written in one reservation each.
        switch self {
        case .publish(let topic, let event):
            buffer.writeRaw(count: 1 + fieldSize(topic) + binarySize(event)) {
                $0.byte(Opcode.publish.rawValue)
                $0.field(topic)
                $0.binary(event)
            }
            return
        case .broadcast(let message):
            buffer.writeRaw(count: 1 + binarySize(message)) {
                $0.byte(Opcode.broadcast.rawValue)
                $0.binary(message)
            }
            return
        case .request(let id, let body, let timeout):
            buffer.writeRaw(count: 1 + varintSize(id) + binarySize(body) + varintSize(timeout)) {
                $0.byte(Opcode.request.rawValue)
                $0.varint(id)
                $0.binary(body)
                $0.varint(timeout)
            }
            return
        case .reply(let id, .success(let body)):
            buffer.writeRaw(count: 1 + varintSize(id) + 2 + binarySize(body)) {
                $0.byte(Opcode.reply.rawValue)
                $0.varint(id)
                $0.byte(0)  // not timed out
                $0.byte(1)  // success
                $0.binary(body)
            }
            return
        default:
            break
        }
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
            buffer.writeRequestOutcome(outcome)
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
        case .event(let subscription, let topic, let headers, let event):
            buffer.writeField(subscription)
            buffer.writeField(topic)
            buffer.writeHeaders(headers)
            buffer.writeBinary(event)
        case .hbroadcast(let headers, let message):
            buffer.writeHeaders(headers)
            buffer.writeBinary(message)
        case .hrequest(let id, let headers, let body, let timeout):
            buffer.writeVarint(id)
            buffer.writeHeaders(headers)
            buffer.writeBinary(body)
            buffer.writeVarint(timeout)
        case .hreply(let id, let headers, let outcome):
            buffer.writeVarint(id)
            buffer.writeHeaders(headers)
            buffer.writeRequestOutcome(outcome)
        case .surveyAnswer(let id, let headers, let outcome):
            buffer.writeVarint(id)
            buffer.writeHeaders(headers)
            buffer.writeReplyOutcome(outcome)
        case .surveyEnd(let id, let tally):
            buffer.writeVarint(id)
            buffer.writeSurveyTally(tally)
        }
    }
}
