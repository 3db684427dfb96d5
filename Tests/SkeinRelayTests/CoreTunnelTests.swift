import NIOCore
import SkeinMembership
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

@Suite("Core: tunnels")
struct CoreTunnelTests {
    /// A tunnel built as in the spec's example: the initiator's id 7, the member's id 42.
    static func built(_ configure: (inout RelaySettings) -> Void = { _ in }) -> (CoreDriver, initiator: ConnectionID, member: ConnectionID) {
        var d = CoreDriver(configure)
        let member = d.connect(cluster: "echo")
        let initiator = d.connect()
        _ = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator)
        _ = d.send(.tunnelConfirm(buildID: 0, tunnelID: 42), from: member)
        return (d, initiator, member)
    }

    @Test("the spec's worked example: build, confirm, allowances")
    func specExample() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let initiator = d.connect()
        let offer = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator)
        #expect(offer.effects == [.send(member, .tunnelInit(buildID: 0, chunkLimit: 65536))])
        let confirm = d.send(.tunnelConfirm(buildID: 0, tunnelID: 42), from: member)
        #expect(confirm.effects == [
            .send(member, .tunnelAllow(tunnelID: 42, bytes: 4 << 20)),
            .send(initiator, .tunnelConfirm(tunnelID: 7, outcome: .built(chunkLimit: 65536))),
            .send(initiator, .tunnelAllow(tunnelID: 7, bytes: 4 << 20)),
        ])
        #expect(d.core.tunnelCount == 1)
        // Both bindings announce their receive windows; nothing is queued, so nothing moves.
        #expect(d.send(.tunnelAllow(tunnelID: 7, bytes: 64 << 20), from: initiator).isEmpty)
        #expect(d.send(.tunnelAllow(tunnelID: 42, bytes: 64 << 20), from: member).isEmpty)
        // The build timer is spent: nothing at the old deadline.
        #expect(d.advance(.seconds(2)).isEmpty)
    }

    @Test("the 100000-byte message crosses as the spec's two chunks, allowance returned for each")
    func chunkedMessage() {
        var (d, initiator, member) = Self.built()
        _ = d.send(.tunnelAllow(tunnelID: 42, bytes: 64 << 20), from: member)
        let first = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 100_000, chunk: bytes(65536)), from: initiator)
        #expect(first.effects == [
            .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: 100_000, chunk: bytes(65536))),
            .send(initiator, .tunnelAllow(tunnelID: 7, bytes: 65536)),
        ])
        let second = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 0, chunk: bytes(34464)), from: initiator)
        #expect(second.effects == [
            .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: 0, chunk: bytes(34464))),
            .send(initiator, .tunnelAllow(tunnelID: 7, bytes: 34464)),
        ])
    }

    @Test("chunks are forwarded only within the receiver's allowance, in order")
    func forwardWithinAllowance() {
        var (d, initiator, member) = Self.built { $0.tunnelBuffer = 100; $0.tunnelChunkLimit = 40 }
        #expect(d.send(.tunnelAllow(tunnelID: 42, bytes: 25), from: member).isEmpty)
        for (i, expectForward) in [true, true, false].enumerated() {
            let out = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: i == 0 ? 30 : 0, chunk: bytes(10, UInt8(i))), from: initiator)
            if expectForward {
                #expect(out.effects == [
                    .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: i == 0 ? 30 : 0, chunk: bytes(10, UInt8(i)))),
                    .send(initiator, .tunnelAllow(tunnelID: 7, bytes: 10)),
                ])
            } else {
                #expect(out.isEmpty, "5 bytes of allowance left: a 10-byte chunk waits")
            }
        }
        #expect(d.send(.tunnelAllow(tunnelID: 42, bytes: 4), from: member).isEmpty, "9 < 10: still waiting")
        let released = d.send(.tunnelAllow(tunnelID: 42, bytes: 1), from: member)
        #expect(released.effects == [
            .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: 0, chunk: bytes(10, 2))),
            .send(initiator, .tunnelAllow(tunnelID: 7, bytes: 10)),
        ])
    }

    @Test("an ALLOW that frees several queued chunks forwards them in one go, with one ALLOW back")
    func batchRelease() {
        var (d, initiator, member) = Self.built { $0.tunnelBuffer = 100 }
        for i in 0..<3 {
            #expect(d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 0, chunk: bytes(10, UInt8(i))), from: initiator).isEmpty)
        }
        let out = d.send(.tunnelAllow(tunnelID: 42, bytes: 1000), from: member)
        #expect(out.effects == [
            .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: 0, chunk: bytes(10, 0))),
            .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: 0, chunk: bytes(10, 1))),
            .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: 0, chunk: bytes(10, 2))),
            .send(initiator, .tunnelAllow(tunnelID: 7, bytes: 30)),
        ])
    }

    @Test("the member → initiator direction works the same way")
    func reverseDirection() {
        var (d, initiator, member) = Self.built()
        _ = d.send(.tunnelAllow(tunnelID: 7, bytes: 5), from: initiator)
        let out = d.send(.tunnelTransfer(tunnelID: 42, sizeOrContinuation: 5, chunk: buffer("hello")), from: member)
        #expect(out.effects == [
            .send(initiator, .tunnelTransfer(tunnelID: 7, sizeOrContinuation: 5, chunk: buffer("hello"))),
            .send(member, .tunnelAllow(tunnelID: 42, bytes: 5)),
        ])
    }

    @Test("a chunk above the chunk limit is a violation")
    func chunkAboveLimit() {
        var (d, initiator, member) = Self.built { $0.tunnelChunkLimit = 16 }
        _ = d.send(.tunnelAllow(tunnelID: 42, bytes: 1000), from: member)
        #expect(d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 16, chunk: bytes(16)), from: initiator).violations.isEmpty)
        let out = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 17, chunk: bytes(17)), from: initiator)
        #expect(out.violations.count == 1)
        #expect(out.closeReason(of: initiator) == "protocol violation: tunnel chunk of 17 bytes exceeds the chunk limit of 16")
        // The other side learns that the tunnel failed.
        guard case .tunnelClose(42, let reason)? = out.frames(to: member).last else {
            Issue.record("the member was not told: \(out)")
            return
        }
        #expect(!reason.isEmpty)
    }

    @Test("sending beyond the relay's allowance is a violation")
    func beyondAllowance() {
        var (d, initiator, member) = Self.built { $0.tunnelBuffer = 32 }
        // The member grants nothing, so nothing is forwarded and nothing is granted back.
        #expect(d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 33, chunk: bytes(16)), from: initiator).isEmpty)
        #expect(d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 0, chunk: bytes(16)), from: initiator).isEmpty)
        let out = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 0, chunk: bytes(1)), from: initiator)
        #expect(out.closeReason(of: initiator) == "protocol violation: tunnel 7 sent 1 bytes with only 0 allowed")
        #expect(out.frames(to: member).contains { if case .tunnelClose(42, let r) = $0 { !r.isEmpty } else { false } })
        _ = member
    }

    @Test("a tunnel message of any size the length field carries is forwarded chunk by chunk, never assembled")
    func messageOfAnySize() {
        var (d, initiator, member) = Self.built { $0.wire.maxMessageSize = 1000 }
        _ = d.send(.tunnelAllow(tunnelID: 42, bytes: 64 << 20), from: member)
        for size: UInt64 in [1001, 64 << 20, 1 << 30, UInt64(1) << 62] {
            let out = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: size, chunk: bytes(10)), from: initiator)
            #expect(out.violations.isEmpty, "a message of \(size) bytes")
            #expect(out.frames(to: member) == [.tunnelTransfer(tunnelID: 42, sizeOrContinuation: size, chunk: bytes(10))])
        }
    }

    @Test("a sender that gives up part way: its next message's first chunk is forwarded as is, the tunnel stays usable")
    func newFirstChunkMidMessage() {
        var (d, initiator, member) = Self.built()
        _ = d.send(.tunnelAllow(tunnelID: 42, bytes: 64 << 20), from: member)
        _ = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 200_000, chunk: bytes(65536)), from: initiator)
        // The sender timed out after one chunk and sends a new, whole message.
        let next = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 5, chunk: bytes(5)), from: initiator)
        #expect(next.violations.isEmpty)
        #expect(next.effects == [
            .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: 5, chunk: bytes(5))),
            .send(initiator, .tunnelAllow(tunnelID: 7, bytes: 5)),
        ])
        #expect(d.core.tunnelCount == 1)
    }

    @Test("the chunk limit never exceeds the maximum message size")
    func effectiveChunkLimit() {
        var d = CoreDriver { $0.wire.maxMessageSize = 1000 }
        let member = d.connect(cluster: "echo")
        let initiator = d.connect()
        #expect(d.send(.tunnelInit(tunnelID: 1, cluster: "echo", timeoutMillis: 1000), from: initiator).frames(to: member)
            == [.tunnelInit(buildID: 0, chunkLimit: 1000)])
    }

    @Test("a member that never confirms: the initiator's build times out; a late confirm gets a failed close")
    func buildTimeout() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let initiator = d.connect()
        _ = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator)
        #expect(d.advance(.milliseconds(999)).isEmpty)
        #expect(d.advance(.milliseconds(1)).effects == [.send(initiator, .tunnelConfirm(tunnelID: 7, outcome: .timedOut))])
        let late = d.send(.tunnelConfirm(buildID: 0, tunnelID: 42), from: member)
        #expect(late.effects == [.send(member, .tunnelClose(tunnelID: 42, reason: "tunnel build timed out or was abandoned"))])
        #expect(late.violations.isEmpty, "only that tunnel fails, never the member connection")
        #expect(d.core.tunnelCount == 0)
        // The initiator may reuse its id.
        #expect(d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator).frames(to: member)
            == [.tunnelInit(buildID: 1, chunkLimit: 65536)])
    }

    @Test("a timeout of 0 fails the build at once")
    func zeroTimeout() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let initiator = d.connect()
        #expect(d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 0), from: initiator).effects
            == [.send(initiator, .tunnelConfirm(tunnelID: 7, outcome: .timedOut))])
        _ = member
    }

    @Test("with no member, a build waits and is offered when one joins")
    func buildWaits() {
        var d = CoreDriver()
        let initiator = d.connect()
        #expect(d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator).isEmpty)
        let member = d.open()
        let join = d.send(.initialize(magic: "iris-client-magic", version: "v1.0-draft2", cluster: "echo"), from: member)
        #expect(join.frames(to: member).last == .tunnelInit(buildID: 0, chunkLimit: 65536))
        #expect(d.send(.tunnelConfirm(buildID: 0, tunnelID: 1), from: member).frames(to: initiator).first
            == .tunnelConfirm(tunnelID: 7, outcome: .built(chunkLimit: 65536)))
    }

    @Test("the member leaving during the build fails it for the initiator at once")
    func memberLeavesDuringBuild() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let initiator = d.connect()
        _ = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator)
        #expect(d.lose(member).frames(to: initiator) == [.tunnelConfirm(tunnelID: 7, outcome: .timedOut)])
        #expect(d.advance(.seconds(2)).isEmpty, "exactly one answer")
    }

    @Test("the initiator abandoning the build: a later confirm gets a failed close")
    func initiatorAbandons() {
        var d = CoreDriver()
        let member = d.connect(cluster: "echo")
        let initiator = d.connect()
        _ = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator)
        #expect(d.send(.tunnelClose(tunnelID: 7), from: initiator).effects == [.send(initiator, .tunnelClose(tunnelID: 7, reason: ""))])
        let confirm = d.send(.tunnelConfirm(buildID: 0, tunnelID: 42), from: member)
        #expect(confirm.effects.count == 1)
        guard case .send(member, .tunnelClose(42, let reason))? = confirm.effects.first else {
            Issue.record("expected a failed TUNNEL CLOSE to the member, got \(confirm)")
            return
        }
        #expect(!reason.isEmpty)
        #expect(d.advance(.seconds(2)).isEmpty)
    }

    @Test("graceful close: ack to the closer at once, the other side closed after its queued data")
    func gracefulClose() {
        var (d, initiator, member) = Self.built()
        _ = d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 3, chunk: buffer("bye")), from: initiator)
        let close = d.send(.tunnelClose(tunnelID: 7), from: initiator)
        #expect(close.effects == [.send(initiator, .tunnelClose(tunnelID: 7, reason: ""))])
        let drain = d.send(.tunnelAllow(tunnelID: 42, bytes: 1 << 20), from: member)
        #expect(drain.effects == [
            .send(member, .tunnelTransfer(tunnelID: 42, sizeOrContinuation: 3, chunk: buffer("bye"))),
            .send(member, .tunnelClose(tunnelID: 42, reason: "")),
        ])
        #expect(d.core.tunnelCount == 0)
        // Both ids are free again; a close crossing ours is just acknowledged.
        #expect(d.send(.tunnelClose(tunnelID: 42), from: member).effects == [.send(member, .tunnelClose(tunnelID: 42, reason: ""))])
    }

    @Test("graceful close with nothing queued closes the other side at once")
    func gracefulCloseEmpty() {
        var (d, initiator, member) = Self.built()
        let close = d.send(.tunnelClose(tunnelID: 42), from: member)
        #expect(close.effects == [
            .send(member, .tunnelClose(tunnelID: 42, reason: "")),
            .send(initiator, .tunnelClose(tunnelID: 7, reason: "")),
        ])
        #expect(d.core.tunnelCount == 0)
    }

    @Test("data sent after the other side closed is discarded; ALLOW on a closed tunnel is ignored")
    func afterClose() {
        var (d, initiator, member) = Self.built()
        _ = d.send(.tunnelClose(tunnelID: 42), from: member)
        #expect(d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 1, chunk: buffer("x")), from: initiator).isEmpty)
        #expect(d.send(.tunnelAllow(tunnelID: 7, bytes: 10), from: initiator).isEmpty)
    }

    @Test("losing a connection fails the other side with a reason", arguments: [true, false])
    func connectionLoss(_ loseMember: Bool) {
        var (d, initiator, member) = Self.built()
        let (gone, survivor, survivorID) = loseMember ? (member, initiator, UInt64(7)) : (initiator, member, UInt64(42))
        let out = d.lose(gone)
        let frames = out.frames(to: survivor)
        #expect(frames.count == 1)
        guard case .tunnelClose(survivorID, let reason)? = frames.first else {
            Issue.record("expected TUNNEL CLOSE \(survivorID), got \(frames)")
            return
        }
        #expect(!reason.isEmpty)
        #expect(d.core.tunnelCount == 0)
        // The survivor's id is free for a new tunnel.
        #expect(d.send(.tunnelTransfer(tunnelID: survivorID, sizeOrContinuation: 1, chunk: buffer("x")), from: survivor).isEmpty)
    }

    @Test("a tunnel id in use is a violation")
    func duplicateID() {
        var (d, initiator, member) = Self.built()
        #expect(d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator).closeReason(of: initiator)
            == "protocol violation: tunnel id 7 already in use")
        _ = member
    }

    @Test("a member confirming with an id it already uses is a violation")
    func duplicateConfirmID() {
        var (d, initiator, member) = Self.built()
        _ = d.send(.tunnelInit(tunnelID: 8, cluster: "echo", timeoutMillis: 1000), from: initiator)
        #expect(d.send(.tunnelConfirm(buildID: 1, tunnelID: 42), from: member).closeReason(of: member)
            == "protocol violation: tunnel id 42 already in use")
    }

    @Test("data on a tunnel still being built is a violation; on an unknown id it is dropped")
    func transferBeforeBuilt() {
        var d = CoreDriver()
        _ = d.connect(cluster: "echo")
        let initiator = d.connect()
        #expect(d.send(.tunnelTransfer(tunnelID: 9, sizeOrContinuation: 1, chunk: buffer("x")), from: initiator).isEmpty)
        _ = d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator)
        #expect(d.send(.tunnelTransfer(tunnelID: 7, sizeOrContinuation: 1, chunk: buffer("x")), from: initiator).violations.count == 1)
    }

    @Test("more tunnels than maxTunnelsPerConnection is a violation")
    func tooManyTunnels() {
        var d = CoreDriver { $0.maxTunnelsPerConnection = 2 }
        _ = d.connect(cluster: "echo")
        let initiator = d.connect()
        _ = d.send(.tunnelInit(tunnelID: 1, cluster: "echo", timeoutMillis: 1000), from: initiator)
        _ = d.send(.tunnelInit(tunnelID: 2, cluster: "echo", timeoutMillis: 1000), from: initiator)
        #expect(d.send(.tunnelInit(tunnelID: 3, cluster: "echo", timeoutMillis: 1000), from: initiator).violations.count == 1)
    }

    @Test("tunnels are balanced over members like requests")
    func balanced() {
        var d = CoreDriver()
        let a = d.connect(cluster: "echo")
        let b = d.connect(cluster: "echo")
        let initiator = d.connect()
        let first = d.send(.tunnelInit(tunnelID: 1, cluster: "echo", timeoutMillis: 1000), from: initiator)
        let second = d.send(.tunnelInit(tunnelID: 2, cluster: "echo", timeoutMillis: 1000), from: initiator)
        #expect(first.sent.map(\.0) == [a])
        #expect(second.sent.map(\.0) == [b])
    }

    @Test("a member may open a tunnel to its own cluster and end up talking to itself")
    func selfTunnel() {
        var d = CoreDriver()
        let m = d.connect(cluster: "echo")
        #expect(d.send(.tunnelInit(tunnelID: 1, cluster: "echo", timeoutMillis: 1000), from: m).frames(to: m) == [.tunnelInit(buildID: 0, chunkLimit: 65536)])
        _ = d.send(.tunnelConfirm(buildID: 0, tunnelID: 2), from: m)
        _ = d.send(.tunnelAllow(tunnelID: 2, bytes: 100), from: m)
        let out = d.send(.tunnelTransfer(tunnelID: 1, sizeOrContinuation: 2, chunk: buffer("hi")), from: m)
        #expect(out.effects == [
            .send(m, .tunnelTransfer(tunnelID: 2, sizeOrContinuation: 2, chunk: buffer("hi"))),
            .send(m, .tunnelAllow(tunnelID: 1, bytes: 2)),
        ])
        #expect(d.lose(m).effects.isEmpty)
        #expect(d.core.tunnelCount == 0)
    }

    @Test("tunnel builds count toward maxPendingRequests")
    func buildsPause() {
        var d = CoreDriver { $0.maxPendingRequests = 1 }
        let member = d.connect(cluster: "echo")
        let initiator = d.connect()
        #expect(d.send(.tunnelInit(tunnelID: 7, cluster: "echo", timeoutMillis: 1000), from: initiator).contains(.pauseReading(initiator)))
        #expect(d.send(.tunnelConfirm(buildID: 0, tunnelID: 42), from: member).contains(.resumeReading(initiator)))
    }
}

@Suite struct TunnelSideTests {
    @Test func sidesAreFoundByPeerAndIdAndAStrangerHoldsNone() {
        let client = ConnectionID(1)
        let relay = testNode(2, group: 1)
        // A client can hold both ends of one tunnel, under two ids.
        var tunnel = Tunnel(
            initiator: TunnelEnd(peer: .local(client), tunnelID: 7, receiveAllowance: 10),
            member: TunnelEnd(peer: .local(client), tunnelID: 8, receiveAllowance: 10))
        #expect(tunnel.side(of: .local(client), tunnelID: 7) == .initiator)
        #expect(tunnel.side(of: .local(client), tunnelID: 8) == .member)
        #expect(tunnel.side(of: .local(client), tunnelID: 9) == nil)
        #expect(tunnel.side(of: .local(ConnectionID(2)), tunnelID: 7) == nil)
        #expect(tunnel.side(ofRelay: relay) == nil)
        tunnel[.member].queue.append((3, ByteBuffer(string: "abc")))
        tunnel[.member.other].state = .closingAfterDrain
        #expect(tunnel.member.queue.count == 1 && tunnel.initiator.state == .closingAfterDrain && tunnel.initiator.isOpen)
        tunnel.member = TunnelEnd(peer: .relay(relay), tunnelID: 5, receiveAllowance: 0)
        #expect(tunnel.side(ofRelay: relay) == .member)
    }
}
