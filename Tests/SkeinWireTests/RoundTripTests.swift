import NIOCore
import SkeinWire
import Testing

/// Frames covering every case of both enums, with edge values: zero and maximal integers,
/// empty and non-ASCII strings, empty bodies.
enum SampleFrames {
    static let client: [ClientFrame] = [
        .initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: ""),
        .initialize(magic: "", version: "skein/1", cluster: "grüße/🧶"),
        .close,
        .broadcast(cluster: "echo", message: buffer("hi")),
        .broadcast(cluster: "", message: ByteBuffer()),
        .request(id: 0, cluster: "echo", body: buffer("hello"), timeoutMillis: 1000),
        .request(id: .max, cluster: "c", body: ByteBuffer(), timeoutMillis: 0),
        .request(id: 1 << 40, cluster: "big", body: pattern(3000), timeoutMillis: .max),
        .reply(id: 0, outcome: .success(buffer("hello"))),
        .reply(id: 9, outcome: .success(ByteBuffer())),
        .reply(id: .max, outcome: .fault("")),
        .reply(id: 1, outcome: .fault("boom ✗")),
        .subscribe(topic: "news"),
        .subscribe(topic: ""),
        .unsubscribe(topic: "news/ünïcode"),
        .publish(topic: "news", event: buffer("event")),
        .publish(topic: "t", event: ByteBuffer()),
        .tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000),
        .tunnelInit(tunnelID: .max, cluster: "", timeoutMillis: 0),
        .tunnelConfirm(buildID: 0, tunnelID: 42),
        .tunnelConfirm(buildID: .max, tunnelID: .max),
        .tunnelAllow(tunnelID: 42, bytes: 64 << 20),
        .tunnelAllow(tunnelID: 0, bytes: 0),
        .tunnelTransfer(tunnelID: 7, sizeOrContinuation: 5, chunk: buffer("abcde")),
        .tunnelTransfer(tunnelID: 7, sizeOrContinuation: 0, chunk: ByteBuffer()),
        .tunnelTransfer(tunnelID: .max, sizeOrContinuation: .max, chunk: pattern(200)),
        .tunnelClose(tunnelID: 0),
        .tunnelClose(tunnelID: .max),
        .hbroadcast(cluster: "echo", headers: [Header("k", "v")], message: buffer("hi")),
        .hbroadcast(cluster: "", headers: [], message: ByteBuffer()),
        .hrequest(id: 3, cluster: "echo", headers: [Header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), Header("k", "")], body: buffer("q"), timeoutMillis: 1000),
        .hreply(id: 3, headers: [Header("k", "v")], outcome: .success(buffer("a"))),
        .hreply(id: .max, headers: [], outcome: .fault("boom")),
        .hpublish(topic: "t", headers: [Header("k", "v"), Header("k", "w")], event: buffer("e")),
        .survey(id: 4, cluster: "inv", headers: [Header("k", "v")], body: buffer("q"), timeoutMillis: 1000),
        .survey(id: .max, cluster: "", headers: [], body: ByteBuffer(), timeoutMillis: 0),
    ]

    static let relay: [RelayFrame] = [
        .initialize(magic: "iris-relay-magic", version: "v1.0-draft2"),
        .initialize(magic: "", version: ""),
        .deny(magic: "iris-relay-magic", reason: "Unsupported protocol. Client: skein/1. Relay: v1.0-draft2."),
        .deny(magic: "", reason: ""),
        .close(reason: ""),
        .close(reason: "relay shutting down"),
        .broadcast(message: buffer("hi")),
        .broadcast(message: ByteBuffer()),
        .request(id: 0, body: buffer("hello"), timeoutMillis: 1000),
        .request(id: .max, body: ByteBuffer(), timeoutMillis: .max),
        .reply(id: 0, outcome: .success(buffer("hello"))),
        .reply(id: 0, outcome: .success(ByteBuffer())),
        .reply(id: 1, outcome: .fault("boom")),
        .reply(id: .max, outcome: .fault("")),
        .reply(id: 3, outcome: .timedOut),
        .publish(topic: "news", event: buffer("event")),
        .publish(topic: "", event: ByteBuffer()),
        .tunnelInit(buildID: 0, chunkLimit: 65536),
        .tunnelInit(buildID: .max, chunkLimit: 0),
        .tunnelConfirm(tunnelID: 7, outcome: .built(chunkLimit: 65536)),
        .tunnelConfirm(tunnelID: .max, outcome: .built(chunkLimit: .max)),
        .tunnelConfirm(tunnelID: 7, outcome: .timedOut),
        .tunnelAllow(tunnelID: 7, bytes: 4 << 20),
        .tunnelAllow(tunnelID: .max, bytes: .max),
        .tunnelTransfer(tunnelID: 7, sizeOrContinuation: 5, chunk: buffer("abcde")),
        .tunnelTransfer(tunnelID: 0, sizeOrContinuation: 0, chunk: ByteBuffer()),
        .tunnelClose(tunnelID: 7, reason: ""),
        .tunnelClose(tunnelID: 7, reason: "remote connection closed"),
        .requestFailed(id: 0, reason: .noMembers, detail: "echo"),
        .event(subscription: "orders.*", topic: "orders.eu", headers: [], event: buffer("e")),
        .hbroadcast(headers: [Header("k", "v")], message: buffer("hi")),
        .hrequest(id: 1, headers: [Header("a", "b")], body: buffer("q"), timeoutMillis: 5),
        .hreply(id: 1, headers: [Header("a", "b")], outcome: .success(buffer("r"))),
        .hreply(id: 2, headers: [], outcome: .fault("f")),
        .hreply(id: 3, headers: [Header("a", "b")], outcome: .timedOut),
        .event(subscription: "a.>", topic: "a.b.c", headers: [Header("k", "v"), Header("k", ""), Header("traceparent", "00-ab-cd-01")], event: ByteBuffer()),
        .requestFailed(id: .max, reason: .other(0xff), detail: ""),
        .tunnelFailed(tunnelID: 7, reason: .networkUnreachable, detail: "us"),
        .tunnelFailed(tunnelID: .max, reason: .memberLost, detail: "grüße"),
        .refused(opcode: 0x06, name: "news@us", reason: .notExported, detail: "news"),
        .refused(opcode: 0x00, name: "", reason: .other(0), detail: ""),
        .surveyAnswer(id: 4, headers: [Header("k", "v")], outcome: .success(buffer("a"))),
        .surveyAnswer(id: .max, headers: [], outcome: .fault("")),
        .surveyEnd(id: 4, tally: SurveyTally(asked: 3, answered: 1, faulted: 1, lost: 1)),
        .surveyEnd(id: 0, tally: SurveyTally(asked: .max, answered: .max, faulted: 0, lost: 0)),
    ]
}

extension ClientFrame {
    var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        encode(into: &buffer)
        return buffer
    }
}

extension RelayFrame {
    var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        encode(into: &buffer)
        return buffer
    }
}

@Suite("Round trips")
struct RoundTripTests {
    @Test("every ClientFrame case round-trips", arguments: SampleFrames.client)
    func client(_ frame: ClientFrame) throws {
        var bytes = frame.encoded
        #expect(bytes.getInteger(at: 0, as: UInt8.self) == frame.opcode.rawValue)
        #expect(try ClientFrame.decode(from: &bytes, limits: WireLimits()) == frame)
        #expect(bytes.readableBytes == 0)
    }

    @Test("every RelayFrame case round-trips", arguments: SampleFrames.relay)
    func relay(_ frame: RelayFrame) throws {
        var bytes = frame.encoded
        #expect(bytes.getInteger(at: 0, as: UInt8.self) == frame.opcode.rawValue)
        #expect(try RelayFrame.decode(from: &bytes, limits: WireLimits()) == frame)
        #expect(bytes.readableBytes == 0)
    }

    @Test("the samples cover every case of both enums")
    func coverage() {
        #expect(Set(SampleFrames.client.map(\.opcode)) == Set(Opcode.allCases).subtracting([.deny, .requestFailed, .tunnelFailed, .refused, .event, .surveyAnswer, .surveyEnd]))
        #expect(Set(SampleFrames.relay.map(\.opcode)) == Set(Opcode.allCases).subtracting([.subscribe, .unsubscribe, .hpublish, .survey]))
    }

    @Test("frames that carry the same fields both ways encode identically")
    func sharedEncodings() {
        #expect(ClientFrame.publish(topic: "t", event: buffer("e")).encoded == RelayFrame.publish(topic: "t", event: buffer("e")).encoded)
        #expect(ClientFrame.tunnelAllow(tunnelID: 3, bytes: 9).encoded == RelayFrame.tunnelAllow(tunnelID: 3, bytes: 9).encoded)
        #expect(
            ClientFrame.tunnelTransfer(tunnelID: 3, sizeOrContinuation: 1, chunk: buffer("x")).encoded
                == RelayFrame.tunnelTransfer(tunnelID: 3, sizeOrContinuation: 1, chunk: buffer("x")).encoded)
    }

    @Test("a decoded body is exactly its bytes, even when read from the middle of a stream")
    func sliceIndependence() throws {
        var stream = ByteBuffer(hex: "02")
        stream.writeImmutableBuffer(ClientFrame.publish(topic: "t", event: buffer("payload")).encoded)
        stream.writeImmutableBuffer(ClientFrame.close.encoded)
        #expect(try ClientFrame.decode(from: &stream, limits: WireLimits()) == .close)
        guard case .publish(_, let event)? = try ClientFrame.decode(from: &stream, limits: WireLimits()) else {
            Issue.record("expected PUBLISH")
            return
        }
        #expect(event.readerIndex == 0)
        #expect(String(buffer: event) == "payload")
        #expect(try ClientFrame.decode(from: &stream, limits: WireLimits()) == .close)
        #expect(try ClientFrame.decode(from: &stream, limits: WireLimits()) == nil)
    }
}
