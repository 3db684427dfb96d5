import NIOCore
import Testing

@testable import SkeinMembership

/// The paths the simulator made O(1) or deterministic: the live-member counter, sampled
/// indirect helpers, and the order of push-pull records.
@Suite struct ScaleTests {
    func scannedLiveOthers(_ node: Membership) -> Int {
        node.table.filter(\.isLive).count
    }

    @Test func liveCounterFollowsDeathLeaveRejoinAndReaping() {
        var settings = MembershipSettings.fastLocal
        settings.reapAfter = .seconds(3)
        var (mesh, addresses) = Mesh.converged(6, settings: settings)
        #expect(mesh.node(addresses[0]).liveOthers == 5)
        mesh.crash(addresses[5])
        mesh.call(addresses[4]) { $0.leave(now: $1) }
        mesh.run(for: .milliseconds(10))
        mesh.crash(addresses[4])
        mesh.run(for: .seconds(2))
        for observer in addresses.prefix(4) {
            #expect(mesh.node(observer).liveOthers == 3)
            #expect(mesh.node(observer).liveOthers == scannedLiveOthers(mesh.node(observer)))
        }
        mesh.add(6, idLow: 66, settings: settings, generation: 1)
        mesh.call(addresses[5]) { $0.join(seeds: [addresses[0]], now: $1) }
        mesh.run(for: .milliseconds(3500))
        for observer in addresses.prefix(4) + [addresses[5]] {
            #expect(mesh.node(observer).liveOthers == 4)
            #expect(mesh.node(observer).liveOthers == scannedLiveOthers(mesh.node(observer)))
            #expect(mesh.node(observer).table.count == 4)  // the dead and the left were reaped
        }
    }

    @Test func indirectHelpersAreDistinctAliveMembersOtherThanTheTarget() {
        let (mesh, addresses) = Mesh.converged(20)
        let target = mesh.node(addresses[7]).id
        let suspect = mesh.node(addresses[8]).id
        var node = mesh.node(addresses[0])
        node.table[suspect]!.status = .suspect
        for _ in 0..<200 {
            let helpers = node.indirectHelpers(excluding: target)
            #expect(helpers.count == 3)
            #expect(Set(helpers).count == 3)
            #expect(!helpers.contains(target) && !helpers.contains(suspect))
            #expect(helpers.allSatisfy { node.table[$0]?.status == .alive })
        }
        // Two members: fewer alive helpers than k, the exact scan returns what there is.
        var (small, pair) = Mesh.converged(3)
        let other = small.node(pair[1]).id
        #expect(small.nodes[pair[0]]!.indirectHelpers(excluding: other) == [small.node(pair[2]).id])
    }

    @Test func pushPullRecordsAreSelfFirstThenSortedById() {
        let (mesh, addresses) = Mesh.converged(8)
        let records = mesh.node(addresses[3]).stateRecords()
        #expect(records.count == 8)
        #expect(records[0].id == mesh.node(addresses[3]).id)
        #expect(records.dropFirst().map(\.id) == records.dropFirst().map(\.id).sorted())
    }
}
