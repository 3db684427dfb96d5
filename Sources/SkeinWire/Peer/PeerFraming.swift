import DequeModule
import NIOCore

/// Queues frames for one peer link and packs them into record plaintexts (Docs/peer-protocol.md
/// §5). Pure: the link shell seals each plaintext it returns.
///
/// Every record is filled in class order — control, then interactive, then bulk — and a frame
/// that does not fit is split into fragments, so a control frame or a request queued behind any
/// amount of bulk data waits for at most the record being written. When both interactive and
/// bulk frames wait, a quarter of each record is kept for bulk so tunnels are never starved.
public struct PeerOutbox: Sendable {
    /// Largest record plaintext this outbox produces.
    public let maxRecordPlaintext: Int
    /// A frame is not split to fill fewer than this many bytes at the end of a record.
    public let minimumFragment: Int

    private var queues: [ClassQueue]

    public init(maxRecordPlaintext: Int = 65_536, minimumFragment: Int = 256) {
        precondition(maxRecordPlaintext >= 64 && minimumFragment >= 16 && minimumFragment + 16 <= maxRecordPlaintext / 2)
        self.maxRecordPlaintext = maxRecordPlaintext
        self.minimumFragment = minimumFragment
        self.queues = PeerTrafficClass.allCases.map { _ in ClassQueue() }
    }

    public var isEmpty: Bool { queues.allSatisfy { $0.frames.isEmpty } }

    /// Bytes of frame payload waiting in one class (for backpressure decisions).
    public func queuedBytes(_ trafficClass: PeerTrafficClass) -> Int {
        queues[trafficClass.rawValue].stream.readableBytes
    }

    /// Frames waiting in all classes.
    public var queuedFrames: Int { queues.reduce(0) { $0 + $1.frames.count } }

    public mutating func enqueue(_ frame: PeerFrame) {
        let index = frame.trafficClass.rawValue
        let before = queues[index].stream.writerIndex
        frame.encodePayload(into: &queues[index].stream)
        queues[index].frames.append(Pending(kind: frame.kind, remaining: queues[index].stream.writerIndex - before))
    }

    /// Appends the next record's plaintext to `plaintext`; returns false (appending nothing) when
    /// no frame waits.
    @discardableResult
    public mutating func nextRecord(into plaintext: inout ByteBuffer) -> Bool {
        guard !isEmpty else { return false }
        var space = maxRecordPlaintext
        fill(.control, space: &space, into: &plaintext)
        let bulkWaiting = !queues[PeerTrafficClass.bulk.rawValue].frames.isEmpty
        let reserve = bulkWaiting ? min(space, maxRecordPlaintext / 4) : 0
        var interactiveSpace = space - reserve
        fill(.interactive, space: &interactiveSpace, into: &plaintext)
        space = interactiveSpace + reserve
        fill(.bulk, space: &space, into: &plaintext)
        // Leftover space goes back to interactive frames if bulk did not need it.
        fill(.interactive, space: &space, into: &plaintext)
        return true
    }

    private mutating func fill(_ trafficClass: PeerTrafficClass, space: inout Int, into out: inout ByteBuffer) {
        let index = trafficClass.rawValue
        while let head = queues[index].frames.first {
            let whole = 1 + varintSize(UInt64(head.remaining)) + head.remaining
            if whole <= space {
                Self.writeHeader(kind: head.kind, continues: false, length: head.remaining, into: &out)
                out.writeImmutableBuffer(queues[index].stream.readSlice(length: head.remaining)!)
                queues[index].frames.removeFirst()
                space -= whole
                continue
            }
            // Split: fill the rest of this record with a fragment, if it is worth it.
            let header = 1 + varintSize(UInt64(space))
            let chunk = space - header
            guard chunk >= minimumFragment else { break }
            Self.writeHeader(kind: head.kind, continues: true, length: chunk, into: &out)
            out.writeImmutableBuffer(queues[index].stream.readSlice(length: chunk)!)
            queues[index].frames[0].remaining -= chunk
            space = 0
            break
        }
        queues[index].compactIfNeeded()
    }

    private static func writeHeader(kind: PeerFrame.Kind, continues: Bool, length: Int, into out: inout ByteBuffer) {
        out.writeInteger(kind.rawValue | (continues ? PeerInbox.continuesFlag : 0))
        out.writeVarint(UInt64(length))
    }

    private struct Pending: Sendable {
        var kind: PeerFrame.Kind
        var remaining: Int
    }

    private struct ClassQueue: Sendable {
        /// Payloads of the queued frames, back to back.
        var stream = ByteBuffer()
        var frames = Deque<Pending>()

        mutating func compactIfNeeded() {
            if frames.isEmpty {
                stream.clear()
            } else if stream.readerIndex > 1 << 20 && stream.readerIndex > stream.readableBytes {
                stream.discardReadBytes()
            }
        }
    }
}

/// Unpacks record plaintexts into frames, reassembling fragments per traffic class
/// (Docs/peer-protocol.md §5). Pure; every error ends the link.
public struct PeerInbox: Sendable {
    static let continuesFlag: UInt8 = 0x80

    /// Field limits; a reassembled frame may not exceed `maxFrameSize`.
    public let limits: WireLimits
    public let maxFrameSize: Int

    private var partial: [(kind: PeerFrame.Kind, bytes: ByteBuffer)?]

    public init(limits: WireLimits = WireLimits(), maxFrameSize: Int? = nil) {
        self.limits = limits
        // A body of the largest message plus its names and ids.
        self.maxFrameSize = maxFrameSize ?? (limits.maxMessageSize + 2 * limits.maxStringSize + 64)
        self.partial = Array(repeating: nil, count: PeerTrafficClass.allCases.count)
    }

    /// Bytes held in partly received frames.
    public var reassemblyBytes: Int { partial.reduce(0) { $0 + ($1?.bytes.readableBytes ?? 0) } }

    /// Appends every frame completed by `record` to `frames`.
    public mutating func receive(record: ByteBuffer, into frames: inout [PeerFrame]) throws(PeerFrameError) {
        var record = record
        while record.readableBytes > 0 {
            let type = record.readInteger(as: UInt8.self)!
            guard let kind = PeerFrame.Kind(rawValue: type & ~Self.continuesFlag) else { throw .unknownType(type) }
            let continues = type & Self.continuesFlag != 0
            let length = try Self.readVarint(&record)
            guard length <= UInt64(record.readableBytes) else { throw .truncated }
            let chunk = record.readSlice(length: Int(length))!
            let index = kind.trafficClass.rawValue

            if var held = partial[index] {
                guard held.kind == kind else { throw .fragmentMismatch(expected: held.kind, found: kind) }
                let total = UInt64(held.bytes.readableBytes) + length
                guard total <= UInt64(maxFrameSize) else { throw .frameTooLarge(length: total, limit: maxFrameSize) }
                partial[index] = nil  // keep the buffer uniquely referenced while appending
                var chunk = chunk
                held.bytes.writeBuffer(&chunk)
                if continues {
                    partial[index] = held
                } else {
                    frames.append(try PeerFrame.decode(kind: kind, payload: held.bytes, limits: limits))
                }
            } else if continues {
                guard length <= UInt64(maxFrameSize) else { throw .frameTooLarge(length: length, limit: maxFrameSize) }
                var bytes = ByteBuffer()
                bytes.reserveCapacity(Int(length) * 2)
                var chunk = chunk
                bytes.writeBuffer(&chunk)
                partial[index] = (kind, bytes)
            } else {
                guard length <= UInt64(maxFrameSize) else { throw .frameTooLarge(length: length, limit: maxFrameSize) }
                frames.append(try PeerFrame.decode(kind: kind, payload: chunk, limits: limits))
            }
        }
    }

    private static func readVarint(_ buffer: inout ByteBuffer) throws(PeerFrameError) -> UInt64 {
        var r = FieldReader(buffer: buffer, limits: WireLimits())
        let value: UInt64?
        do {
            value = try r.varint()
        } catch {
            throw .badLength
        }
        guard let value else { throw .truncated }
        buffer = r.buffer
        return value
    }
}
