import NIOCore
import Testing

@testable import SkeinMembership

/// The compact table behind a core: rows found through 4-byte-slot indexes by id, address and name.
@Suite struct MemberTableTests {
    static let now = NIODeadline.uptimeNanoseconds(1)

    static func state(_ n: UInt64, name: String? = nil, host: String = "10.0.0.1", port: UInt16? = nil) -> MemberState {
        MemberState(
            identity: MemberIdentity(
                id: NodeID(high: n &* 31, low: n), name: name ?? "m\(n)", address: MemberAddress(host: host, port: port ?? UInt16(truncatingIfNeeded: n)),
                generation: 0),
            status: .alive, incarnation: 0, metadataVersion: 1, changedAt: now)
    }

    @Test func rowsAreFoundByIdThroughGrowthRemovalAndReuse() {
        var table = MemberTable()
        for n in 1...3000 as ClosedRange<UInt64> { table[Self.state(n).id] = Self.state(n) }
        #expect(table.count == 3000)
        for n in stride(from: 1, through: 3000, by: 2) as StrideThrough<UInt64> { table[Self.state(n).id] = nil }
        #expect(table.count == 1500)
        for n in 1...3000 as ClosedRange<UInt64> {
            #expect((table[Self.state(n).id] != nil) == (n % 2 == 0))
        }
        // Freed rows are reused: the array does not grow while members come and go.
        let rows = table.rows.count
        for n in 5001...6000 as ClosedRange<UInt64> { table[Self.state(n).id] = Self.state(n) }
        #expect(table.rows.count == rows)
        #expect(table.count == 2500)
        #expect(Set(table.map(\.id)).count == 2500)
        #expect(table[Self.state(5500).id]?.name == "m5500")
    }

    @Test func anAddressOrNameIsHeldByTheDesignatedMemberOnly() {
        var table = MemberTable()
        let old = Self.state(1, name: "r", port: 7000)
        let new = Self.state(2, name: "r", port: 7000)
        table[old.id] = old
        table.designate(address: old.address, holder: old.id)
        table.designate(name: "r", holder: old.id)
        table[new.id] = new
        #expect(table.holder(of: old.address) == old.id)
        table.designate(address: new.address, holder: new.id)
        #expect(table.holder(of: old.address) == new.id)
        #expect(table.holder(ofName: "r") == old.id)
        // Moving or renaming gives up what was held under the old address and name.
        var moved = table[new.id]!
        moved.identity = MemberIdentity(id: new.id, name: "s", address: MemberAddress(host: "10.0.0.2", port: 7000), generation: 0)
        table[new.id] = moved
        #expect(table.holder(of: old.address) == nil)
        table[old.id] = nil
        #expect(table.holder(ofName: "r") == nil)
        #expect(table.holder(of: moved.address) == nil)
        table.designate(address: moved.address, holder: new.id)
        #expect(table.holder(of: moved.address) == new.id)
    }

    @Test func iterationFollowsRowOrderSoReplaysAreExact() {
        var a = MemberTable(), b = MemberTable()
        for n in [5, 3, 9, 1] as [UInt64] {
            a[Self.state(n).id] = Self.state(n)
            b[Self.state(n).id] = Self.state(n)
        }
        a[Self.state(3).id] = nil
        b[Self.state(3).id] = nil
        a[Self.state(7).id] = Self.state(7)
        b[Self.state(7).id] = Self.state(7)
        #expect(a.map(\.id) == b.map(\.id))
        #expect(a.map(\.name) == ["m5", "m7", "m9", "m1"])
    }
}

/// A core that starts from a converged view (`knownMembers`): what the simulator's converged
/// bootstrap gives every member.
@Suite struct ConvergedStartTests {
    static func known(_ count: Int) -> [KnownMember] {
        (1...count).map { n in
            try! KnownMember(
                id: NodeID(high: 0, low: UInt64(n)), name: "node-\(n)", address: Mesh.address(UInt16(n)), metadata: MemberMetadata(zone: "z"))
        }
    }

    @Test func itKnowsEveryoneAliveWithMetadataAndEmitsNothingForThem() throws {
        let known = Self.known(50)
        let now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let core = try Membership(
            id: known[0].id, name: "node-1", address: Mesh.address(1), metadata: MemberMetadata(zone: "z"), settings: .lan,
            seed: 3, now: now, knownMembers: known)
        #expect(core.members.count == 50)
        #expect(core.members.allSatisfy { $0.status == .alive && $0.metadata == MemberMetadata(zone: "z") })
        #expect(core.liveOthers == 49)
        #expect(core.pendingUpdates == 0)
        // Timers at random phases, as in a core that has been running a while.
        #expect(core.probeRoundAt > now && core.probeRoundAt <= now + MembershipSettings.lan.probeInterval)
        #expect(core.pushPullAt > now && core.pushPullAt <= now + core.pushPullInterval)
    }

    @Test func convergedCoresProbeEachOtherAndShareTheirIdentities() throws {
        let known = Self.known(6)
        var mesh = Mesh()
        for entry in known {
            let n = UInt16(entry.id.low)
            mesh.nodes[Mesh.address(n)] = try Membership(
                id: entry.id, name: "node-\(n)", address: Mesh.address(n), metadata: MemberMetadata(zone: "z"),
                settings: .fastLocal, seed: UInt64(n), now: mesh.now, knownMembers: known)
        }
        mesh.run(for: .seconds(1))
        #expect(mesh.converged())
        #expect(mesh.nodes.values.allSatisfy { $0.stats.acksReceived > 0 && $0.stats.suspicionsRaised == 0 })
        // Probes and acks re-announce nobody: every row still holds the shared identity object.
        let a = mesh.node(Mesh.address(1)), b = mesh.node(Mesh.address(2))
        #expect(a.table[known[3].id]!.identity === b.table[known[3].id]!.identity)
    }
}
