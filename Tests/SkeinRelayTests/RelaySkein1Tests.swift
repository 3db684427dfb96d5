import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay

/// `skein/1` (Docs/skein-1.md) against a real relay over TCP, byte for byte.
@Suite("Relay over TCP: skein/1")
struct RelaySkein1Tests {
    static let clientINIT = "00 11 69 72 69 73 2d 63 6c 69 65 6e 74 2d 6d 61 67 69 63 07 73 6b 65 69 6e 2f 31 00"
    static let relayINIT = "00 10 69 72 69 73 2d 72 65 6c 61 79 2d 6d 61 67 69 63 07 73 6b 65 69 6e 2f 31"
    /// A member of `echo` speaking skein/1.
    static let memberINIT = "00 11 69 72 69 73 2d 63 6c 69 65 6e 74 2d 6d 61 67 69 63 07 73 6b 65 69 6e 2f 31 04 65 63 68 6f"

    @Test("INIT skein/1 is answered with INIT skein/1")
    func negotiation() async throws {
        try await RelayHarness.run { relay in
            let client = try await relay.connect()
            try await client.write(Self.clientINIT)
            #expect(try await client.read(hexLike: Self.relayINIT) == Self.relayINIT)
            await client.close()
        }
    }

    @Test("a request and a tunnel to a cluster without members fail at once with no members")
    func noMembers() async throws {
        try await RelayHarness.run { relay in
            let client = try await relay.connect()
            try await client.write(Self.clientINIT)
            #expect(try await client.read(hexLike: Self.relayINIT) == Self.relayINIT)
            // A 100 s timeout: a v1.0-draft2 request would wait that long for a member.
            try await client.write("04 00 04 65 63 68 6f 05 68 65 6c 6c 6f a0 8d 06")
            #expect(try await client.read(hexLike: "20 00 01 04 65 63 68 6f") == "20 00 01 04 65 63 68 6f")
            try await client.write("09 07 04 65 63 68 6f a0 8d 06")
            #expect(try await client.read(hexLike: "21 07 01 04 65 63 68 6f") == "21 07 01 04 65 63 68 6f")
            await client.close()
        }
    }

    @Test("a member that disconnects holding a request: member lost at once, not at the deadline")
    func memberLost() async throws {
        try await RelayHarness.run { relay in
            let member = try await relay.connect("member")
            try await member.write(Self.memberINIT)
            #expect(try await member.read(hexLike: Self.relayINIT) == Self.relayINIT)
            let client = try await relay.connect("client")
            try await client.write(Self.clientINIT)
            #expect(try await client.read(hexLike: Self.relayINIT) == Self.relayINIT)
            try await client.write("04 05 04 65 63 68 6f 05 68 65 6c 6c 6f a0 8d 06")
            #expect(try await member.read(hexLike: "04 00 05 68 65 6c 6c 6f a0 8d 06").hasPrefix("04 00 05 68 65 6c 6c 6f"))
            await member.close()
            let detail = "the member holding the request was lost"
            let expected = "20 05 02 " + ByteBuffer(bytes: [UInt8(detail.utf8.count)] + Array(detail.utf8)).hex
            #expect(try await client.read(hexLike: expected) == expected)
            await client.close()
        }
    }

    @Test("v1.0-draft2 and skein/1 clients side by side: only the skein/1 one hears the failure early")
    func dialectsSideBySide() async throws {
        try await RelayHarness.run { relay in
            let iris = try await relay.handshake("iris")
            let skein = try await relay.connect("skein")
            try await skein.write(Self.clientINIT)
            #expect(try await skein.read(hexLike: Self.relayINIT) == Self.relayINIT)
            // Both ask for echo with 300 ms; only the skein/1 caller is told at once.
            try await iris.write("04 00 04 65 63 68 6f 00 ac 02")
            try await skein.write("04 00 04 65 63 68 6f 00 ac 02")
            #expect(try await skein.read(hexLike: "20 00 01 04 65 63 68 6f") == "20 00 01 04 65 63 68 6f")
            #expect(try await iris.read(hexLike: "05 00 01") == "05 00 01")
            await iris.close()
            await skein.close()
        }
    }
}
