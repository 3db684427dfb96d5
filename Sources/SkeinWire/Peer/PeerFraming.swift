import DequeModule
import NIOCore

/// Queues frames for one peer link and packs them into record plaintexts (Docs/peer-protocol.md
/// §5). Pure: the link shell seals each plaintext it is handed.
///
/// Every record is filled in class order — control, then interactive, then bulk — and a frame
/// that does not fit is split into fragments, so a control frame or a request queued behind any
/// amount of bulk data waits for at most the record being written. When both interactive and
/// bulk frames wait, a quarter of each record is kept for bulk so tunnels are never starved.
///
/// Frames are encoded once, header and payload, into their class's queue. A record that is a
/// run of whole frames of one class (the common case: a flood of events, or of tunnel chunks) is
/// handed to the sealer straight from that queue; only records that mix classes or carry a
/// fragment are gathered into a scratch buffer first.
public struct PeerOutbox: Sendable {
    /// Largest record plaintext this outbox produces.
    public let maxRecordPlaintext: Int
    /// A frame is not split to fill fewer than this many bytes at the end of a record.
    public let minimumFragment: Int

    private var queues: [ClassQueue]
    private var scratch = ByteBuffer()

    public init(maxRecordPlaintext: Int = 65_536, minimumFragment: Int = 256) {
        precondition(maxRecordPlaintext >= 64 && minimumFragment >= 16 && minimumFragment + 16 <= maxRecordPlaintext / 2)
        self.maxRecordPlaintext = maxRecordPlaintext
        self.minimumFragment = minimumFragment
        self.queues = PeerTrafficClass.allCases.map { _ in ClassQueue() }
    }

    public var isEmpty: Bool { queues[0].frames.isEmpty && queues[1].frames.isEmpty && queues[2].frames.isEmpty }

    /// Bytes of frames (headers and payloads) waiting in one class (for backpressure decisions).
    public func queuedBytes(_ trafficClass: PeerTrafficClass) -> Int {
        queues[trafficClass.rawValue].stream.readableBytes
    }

    /// Bytes of frames waiting in all classes.
    public var totalQueuedBytes: Int {
        queues[0].stream.readableBytes + queues[1].stream.readableBytes + queues[2].stream.readableBytes
    }

    /// Frames waiting in all classes.
    public var queuedFrames: Int { queues[0].frames.count + queues[1].frames.count + queues[2].frames.count }

    public mutating func enqueue(_ frame: PeerFrame) {
        let index = frame.trafficClass.rawValue
        let length = frame.payloadSize
        let kind = frame.kind
        let header = 1 + varintSize(UInt64(length))
        let before = queues[index].stream.writerIndex
        frame.encode(into: &queues[index].stream, payloadSize: length)
        assert(queues[index].stream.writerIndex - before == header + length, "payloadSize disagrees with encodePayload for \(kind)")
        queues[index].frames.append(Pending(kind: kind, header: header, remaining: length))
    }

    /// Appends the next record's plaintext to `plaintext`; returns false (appending nothing) when
    /// no frame waits.
    @discardableResult
    public mutating func nextRecord(into plaintext: inout ByteBuffer) -> Bool {
        nextRecord { plaintext.writeBytes($0) }
    }

    /// Passes the next record's plaintext to `body` (valid only during the call); returns false
    /// (calling nothing) when no frame waits.
    @discardableResult
    public mutating func nextRecord(_ body: (UnsafeRawBufferPointer) throws -> Void) rethrows -> Bool {
        guard !isEmpty else { return false }
        var pieces: [Piece] = []
        var space = maxRecordPlaintext
        fill(.control, space: &space, into: &pieces)
        let bulkWaiting = !queues[PeerTrafficClass.bulk.rawValue].frames.isEmpty
        let reserve = bulkWaiting ? min(space, maxRecordPlaintext / 4) : 0
        var interactiveSpace = space - reserve
        fill(.interactive, space: &interactiveSpace, into: &pieces)
        space = interactiveSpace + reserve
        fill(.bulk, space: &space, into: &pieces)
        // Leftover space of the reserve goes back to interactive frames if bulk did not need it.
        if reserve > 0 { fill(.interactive, space: &space, into: &pieces) }

        if pieces.count == 1, case .bytes(let run) = pieces[0] {
            // A run of whole frames of one class: sealed straight from its queue.
            try run.withUnsafeReadableBytes(body)
        } else {
            scratch.clear()
            for piece in pieces {
                switch piece {
                case .bytes(let bytes):
                    scratch.writeImmutableBuffer(bytes)
                case .fragmentHeader(let kind, let continues, let length):
                    scratch.writeInteger(kind.rawValue | (continues ? PeerInbox.continuesFlag : 0))
                    scratch.writeVarint(UInt64(length))
                }
            }
            try scratch.withUnsafeReadableBytes(body)
        }
        pieces.removeAll()  // release the queues' storage before compacting it
        for index in queues.indices { queues[index].compactIfNeeded() }
        return true
    }

    /// Takes frames of one class for the record being built, within `space`.
    ///
    /// A frame that does not fit in what is left of the record is split to fill it (never into a
    /// fragment under `minimumFragment`) when the frame is larger than a whole record, or when
    /// this class was given less than a whole record (other classes or the bulk reserve took
    /// part of it). A frame that would fit in a record of its own is not split just to fill the
    /// tail of one that this class had to itself: it leads the next record, whole, so a flood of
    /// frames of one class is sealed as runs of whole frames straight from the queue.
    private mutating func fill(_ trafficClass: PeerTrafficClass, space: inout Int, into pieces: inout [Piece]) {
        let index = trafficClass.rawValue
        let hadWholeRecord = space == maxRecordPlaintext
        var run = 0  // bytes of whole frames (with their queued headers) taken and not yet sliced
        while let head = queues[index].frames.first {
            // A frame not yet started is queued with its header; the rest of a split one is not.
            let whole = head.header > 0 ? head.header + head.remaining : 1 + varintSize(UInt64(head.remaining)) + head.remaining
            if head.header > 0 && whole <= space {
                run += whole
                space -= whole
                queues[index].frames.removeFirst()
                continue
            }
            if run > 0 {
                pieces.append(.bytes(queues[index].stream.readSlice(length: run)!))
                run = 0
            }
            if head.header == 0 && whole <= space {
                // The last piece of a split frame.
                pieces.append(.fragmentHeader(head.kind, continues: false, length: head.remaining))
                pieces.append(.bytes(queues[index].stream.readSlice(length: head.remaining)!))
                queues[index].frames.removeFirst()
                space -= whole
                continue
            }
            if hadWholeRecord && whole <= maxRecordPlaintext { break }
            // Split: fill the rest of this record with a fragment, if it is worth it.
            let header = 1 + varintSize(UInt64(space))
            let chunk = space - header
            guard chunk >= minimumFragment else { break }
            if head.header > 0 {
                queues[index].stream.moveReaderIndex(forwardBy: head.header)
                queues[index].frames[0].header = 0
            }
            pieces.append(.fragmentHeader(head.kind, continues: true, length: chunk))
            pieces.append(.bytes(queues[index].stream.readSlice(length: chunk)!))
            queues[index].frames[0].remaining -= chunk
            space = 0
            break
        }
        if run > 0 { pieces.append(.bytes(queues[index].stream.readSlice(length: run)!)) }
    }

    private enum Piece {
        /// Bytes of a class queue, as they go into the record.
        case bytes(ByteBuffer)
        /// The header of a fragment (its payload follows as `.bytes`).
        case fragmentHeader(PeerFrame.Kind, continues: Bool, length: Int)
    }

    private struct Pending: Sendable {
        var kind: PeerFrame.Kind
        /// Bytes of the frame's header in the queue; 0 once a fragment of it has been sent.
        var header: Int
        /// Payload bytes not sent yet.
        var remaining: Int
    }

    private struct ClassQueue: Sendable {
        /// The queued frames, header and payload, back to back.
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
    private var names = NameCache()

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
                    frames.append(try PeerFrame.decode(kind: kind, payload: held.bytes, limits: limits, names: &names))
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
                frames.append(try PeerFrame.decode(kind: kind, payload: chunk, limits: limits, names: &names))
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
