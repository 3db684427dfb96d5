import NIOCore
import SkeinWire

/// Every worked example of RELAY-PROTOCOL.md, byte for byte, with the frame it spells.
/// `payload` bytes (a counting pattern) follow `hex` for the large tunnel chunks.
struct Example<Frame: Sendable & Equatable>: Sendable, CustomStringConvertible {
    var name: String
    var hex: String
    var payload = 0
    var frame: Frame

    var bytes: ByteBuffer {
        var buffer = ByteBuffer(hex: hex)
        buffer.writeImmutableBuffer(pattern(payload))
        return buffer
    }

    var description: String { name }
}

enum SpecExamples {
    static let clientINIT =
        "00 11 69 72 69 73 2d 63 6c 69 65 6e 74 2d 6d 61 67 69 63 0b 76 31 2e 30 2d 64 72 61 66 74 32 00"
    static let memberINIT =
        "00 11 69 72 69 73 2d 63 6c 69 65 6e 74 2d 6d 61 67 69 63 0b 76 31 2e 30 2d 64 72 61 66 74 32 04 65 63 68 6f"
    static let relayINIT =
        "00 10 69 72 69 73 2d 72 65 6c 61 79 2d 6d 61 67 69 63 0b 76 31 2e 30 2d 64 72 61 66 74 32"

    /// Binding → relay.
    static let client: [Example<ClientFrame>] = [
        Example(
            name: "INIT, plain client", hex: clientINIT,
            frame: .initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "")),
        Example(
            name: "INIT, member of echo", hex: memberINIT,
            frame: .initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo")),
        Example(
            name: "REQUEST id 0 to echo, hello, 1000 ms", hex: "04 00 04 65 63 68 6f 05 68 65 6c 6c 6f e8 07",
            frame: .request(id: 0, cluster: "echo", body: buffer("hello"), timeoutMillis: 1000)),
        Example(
            name: "REPLY success", hex: "05 00 01 05 68 65 6c 6c 6f",
            frame: .reply(id: 0, outcome: .success(buffer("hello")))),
        Example(
            name: "REPLY fault boom", hex: "05 01 00 04 62 6f 6f 6d",
            frame: .reply(id: 1, outcome: .fault("boom"))),
        Example(
            name: "TUNNEL INIT 7 to echo, 1000 ms", hex: "09 07 04 65 63 68 6f e8 07",
            frame: .tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000)),
        Example(
            name: "TUNNEL CONFIRM build 0 as 42", hex: "0a 00 2a",
            frame: .tunnelConfirm(buildID: 0, tunnelID: 42)),
        Example(
            name: "TUNNEL ALLOW 64 MiB", hex: "0b 2a 80 80 80 20",
            frame: .tunnelAllow(tunnelID: 42, bytes: 64 << 20)),
        Example(
            name: "TUNNEL TRANSFER, first chunk of 100000", hex: "0c 07 a0 8d 06 80 80 04", payload: 65536,
            frame: .tunnelTransfer(tunnelID: 7, sizeOrContinuation: 100_000, chunk: pattern(65536))),
        Example(
            name: "TUNNEL TRANSFER, continuation of 34464", hex: "0c 07 00 a0 8d 02", payload: 34464,
            frame: .tunnelTransfer(tunnelID: 7, sizeOrContinuation: 0, chunk: pattern(34464))),
        Example(name: "TUNNEL CLOSE 7", hex: "0d 07", frame: .tunnelClose(tunnelID: 7)),
        Example(name: "CLOSE", hex: "02", frame: .close),
    ]

    /// Relay → binding.
    static let relay: [Example<RelayFrame>] = [
        Example(
            name: "INIT", hex: relayINIT,
            frame: .initialize(magic: "iris-relay-magic", version: "v1.0-draft2")),
        Example(
            name: "REQUEST to the member", hex: "04 00 05 68 65 6c 6c 6f e8 07",
            frame: .request(id: 0, body: buffer("hello"), timeoutMillis: 1000)),
        Example(
            name: "REPLY success", hex: "05 00 00 01 05 68 65 6c 6c 6f",
            frame: .reply(id: 0, outcome: .success(buffer("hello")))),
        Example(
            name: "REPLY fault boom", hex: "05 01 00 00 04 62 6f 6f 6d",
            frame: .reply(id: 1, outcome: .fault("boom"))),
        Example(name: "REPLY timed out", hex: "05 03 01", frame: .reply(id: 3, outcome: .timedOut)),
        Example(
            name: "TUNNEL INIT build 0, chunkLimit 65536", hex: "09 00 80 80 04",
            frame: .tunnelInit(buildID: 0, chunkLimit: 65536)),
        Example(
            name: "TUNNEL ALLOW 4 MiB to the member", hex: "0b 2a 80 80 80 02",
            frame: .tunnelAllow(tunnelID: 42, bytes: 4 << 20)),
        Example(
            name: "TUNNEL CONFIRM 7 built, chunkLimit 65536", hex: "0a 07 00 80 80 04",
            frame: .tunnelConfirm(tunnelID: 7, outcome: .built(chunkLimit: 65536))),
        Example(
            name: "TUNNEL ALLOW 4 MiB to the initiator", hex: "0b 07 80 80 80 02",
            frame: .tunnelAllow(tunnelID: 7, bytes: 4 << 20)),
        Example(
            name: "TUNNEL TRANSFER, first chunk of 100000", hex: "0c 07 a0 8d 06 80 80 04", payload: 65536,
            frame: .tunnelTransfer(tunnelID: 7, sizeOrContinuation: 100_000, chunk: pattern(65536))),
        Example(
            name: "TUNNEL TRANSFER, continuation of 34464", hex: "0c 07 00 a0 8d 02", payload: 34464,
            frame: .tunnelTransfer(tunnelID: 7, sizeOrContinuation: 0, chunk: pattern(34464))),
        Example(name: "TUNNEL CLOSE ack", hex: "0d 07 00", frame: .tunnelClose(tunnelID: 7, reason: "")),
        Example(name: "CLOSE, graceful", hex: "02 00", frame: .close(reason: "")),
    ]

    /// skein/1 (Docs/skein-1.md).
    static let skein1ClientINIT =
        "00 11 69 72 69 73 2d 63 6c 69 65 6e 74 2d 6d 61 67 69 63 07 73 6b 65 69 6e 2f 31 00"
    static let skein1RelayINIT =
        "00 10 69 72 69 73 2d 72 65 6c 61 79 2d 6d 61 67 69 63 07 73 6b 65 69 6e 2f 31"
    static let skein1: [Example<RelayFrame>] = [
        Example(
            name: "REQUEST FAILED 0, no members, echo", hex: "20 00 01 04 65 63 68 6f",
            frame: .requestFailed(id: 0, reason: .noMembers, detail: "echo")),
        Example(
            name: "TUNNEL FAILED 7, network unreachable, us", hex: "21 07 03 02 75 73",
            frame: .tunnelFailed(tunnelID: 7, reason: .networkUnreachable, detail: "us")),
        Example(
            name: "REFUSED SUBSCRIBE news@us, not exported, news", hex: "22 06 07 6e 65 77 73 40 75 73 04 04 6e 65 77 73",
            frame: .refused(opcode: 0x06, name: "news@us", reason: .notExported, detail: "news")),
    ]

    /// skein/2 (Docs/skein-2.md).
    static let skein2ClientINIT =
        "00 11 69 72 69 73 2d 63 6c 69 65 6e 74 2d 6d 61 67 69 63 07 73 6b 65 69 6e 2f 32 00"
    static let skein2RelayINIT =
        "00 10 69 72 69 73 2d 72 65 6c 61 79 2d 6d 61 67 69 63 07 73 6b 65 69 6e 2f 32"
    static let skein2: [Example<RelayFrame>] = [
        Example(
            name: "EVENT orders.* orders.eu, no headers, 01",
            hex: "34 08 6f 72 64 65 72 73 2e 2a 09 6f 72 64 65 72 73 2e 65 75 00 01 01",
            frame: .event(subscription: "orders.*", topic: "orders.eu", headers: [], event: ByteBuffer(bytes: [0x01]))),
        Example(
            name: "EVENT t t, k: v, ff", hex: "34 01 74 01 74 01 01 6b 01 76 01 ff",
            frame: .event(subscription: "t", topic: "t", headers: [Header("k", "v")], event: ByteBuffer(bytes: [0xff]))),
        Example(
            name: "REFUSED SUBSCRIBE a..*, invalid name", hex: "22 06 04 61 2e 2e 2a 05 00",
            frame: .refused(opcode: 0x06, name: "a..*", reason: .invalidName, detail: "")),
    ]
}
