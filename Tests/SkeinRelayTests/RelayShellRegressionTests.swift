import NIOCore
import SkeinWire
import Testing

@testable import SkeinRelay

/// Defects of the NIO shell (Sources/SkeinRelay/Shell/ClientServer.swift) that these tests
/// found, kept as regression tests.
@Suite("Relay over TCP: shell regressions")
struct RelayShellRegressionTests {
    @Test("a silent connection is closed at the handshake timeout even when nothing else happens")
    func lonelySilentConnection() async throws {
        try await RelayHarness.run({ $0.settings.handshakeTimeout = .milliseconds(200) }) { relay in
            let silent = try await relay.connect("silent")
            // No other connection exists, so nothing but the handshake timer can close it.
            #expect(try await silent.readToEnd(within: .seconds(2)).readableBytes == 0)
        }
    }

    @Test("when the relay closes a connection, frames for other connections are sent once")
    func noDuplicateFramesOnDisconnect() async throws {
        try await RelayHarness.run { relay in
            let (offender, member) = try await RelayBadInputTests.tunnel(relay)
            try await offender.write("0e")
            #expect(try await offender.readToEnd() == closeFrame("protocol violation: unknown opcode 0xe"))
            guard case .tunnelClose(42, _) = try await member.readFrame() else {
                Issue.record("the member's end of the tunnel was not closed")
                return
            }
            // The member's own broadcast must be the next thing it receives: the tunnel close
            // was not sent twice.
            try await member.write("03 07 74 75 6e 6e 65 6c 73 04 73 79 6e 63")
            #expect(try await member.readFrame() == .broadcast(message: ByteBuffer(string: "sync")))
        }
    }
}
