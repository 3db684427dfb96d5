import NIOCore
import SkeinWire
import Testing

/// Decoding is all-or-nothing: every strict prefix of a frame is "need more bytes" (nil, nothing
/// consumed) and the whole frame decodes; a stream cut anywhere decodes to the same frames.
/// (Like NIO's `ByteToMessageDecoderVerifier`, for the two frame enums.)
@Suite("Every split")
struct SplitTests {
    /// Every split point of a small encoding; for large ones, the headers, the tail, and a stride.
    static func splitPoints(_ count: Int) -> [Int] {
        guard count > 1024 else { return Array(0...count) }
        return Array(Set(Array(0..<64) + Array(stride(from: 64, to: count, by: 997)) + Array(count - 64...count))).sorted()
    }

    static let clientFrames: [ClientFrame] = SampleFrames.client + SpecExamples.client.map(\.frame)
    static let relayFrames: [RelayFrame] = SampleFrames.relay + SpecExamples.relay.map(\.frame)

    @Test("ClientFrame: strict prefixes are incomplete, the whole decodes", arguments: clientFrames)
    func clientPrefixes(_ frame: ClientFrame) throws {
        try checkPrefixes(frame.encoded, expected: frame, decode: ClientFrame.decode)
    }

    @Test("RelayFrame: strict prefixes are incomplete, the whole decodes", arguments: relayFrames)
    func relayPrefixes(_ frame: RelayFrame) throws {
        try checkPrefixes(frame.encoded, expected: frame, decode: RelayFrame.decode)
    }

    @Test("ClientFrame: two frames cut anywhere decode to both, in order", arguments: clientFrames)
    func clientPairs(_ frame: ClientFrame) throws {
        let other = ClientFrame.request(id: 5, cluster: "echo", body: buffer("x"), timeoutMillis: 9)
        try checkSplits(of: [frame, other], encode: \.encoded, decode: ClientFrame.decode)
        try checkSplits(of: [frame, frame], encode: \.encoded, decode: ClientFrame.decode)
    }

    @Test("RelayFrame: two frames cut anywhere decode to both, in order", arguments: relayFrames)
    func relayPairs(_ frame: RelayFrame) throws {
        let other = RelayFrame.reply(id: 5, outcome: .fault("no"))
        try checkSplits(of: [frame, other], encode: \.encoded, decode: RelayFrame.decode)
        try checkSplits(of: [frame, frame], encode: \.encoded, decode: RelayFrame.decode)
    }

    @Test("a stream fed one byte at a time decodes every spec example in order")
    func byteByByte() throws {
        let frames = SpecExamples.client.map(\.frame).filter { $0.encoded.readableBytes < 1024 }
        var stream = ByteBuffer()
        for frame in frames { frame.encode(into: &stream) }
        var cumulation = ByteBuffer()
        var decoded: [ClientFrame] = []
        for byte in stream.readableBytesView {
            cumulation.writeInteger(byte)
            while let frame = try ClientFrame.decode(from: &cumulation, limits: WireLimits()) { decoded.append(frame) }
        }
        #expect(decoded == frames)
        #expect(cumulation.readableBytes == 0)
    }

    // MARK: - Helpers

    typealias Decode<F> = (inout ByteBuffer, WireLimits) throws(WireError) -> F?

    private func checkPrefixes<F: Equatable>(_ bytes: ByteBuffer, expected: F, decode: Decode<F>) throws {
        var wrong: [Int] = []
        for length in Self.splitPoints(bytes.readableBytes) where length < bytes.readableBytes {
            var prefix = bytes.getSlice(at: bytes.readerIndex, length: length)!
            let result = try decode(&prefix, WireLimits())
            if result != nil || prefix.readerIndex != 0 { wrong.append(length) }
        }
        #expect(wrong.isEmpty, "prefixes of these lengths did not decode to nil untouched: \(wrong)")
        var whole = bytes
        #expect(try decode(&whole, WireLimits()) == expected)
        #expect(whole.readableBytes == 0)
    }

    private func checkSplits<F: Equatable>(of frames: [F], encode: (F) -> ByteBuffer, decode: Decode<F>) throws {
        var stream = ByteBuffer()
        for frame in frames { stream.writeImmutableBuffer(encode(frame)) }
        var wrong: [Int] = []
        for cut in Self.splitPoints(stream.readableBytes) {
            var cumulation = stream.getSlice(at: 0, length: cut)!
            var decoded: [F] = []
            while let frame = try decode(&cumulation, WireLimits()) { decoded.append(frame) }
            var rest = stream.getSlice(at: cut, length: stream.readableBytes - cut)!
            cumulation.writeBuffer(&rest)
            while let frame = try decode(&cumulation, WireLimits()) { decoded.append(frame) }
            if decoded != frames || cumulation.readableBytes != 0 { wrong.append(cut) }
        }
        #expect(wrong.isEmpty, "cutting the stream at these offsets changed the result: \(wrong)")
    }
}
