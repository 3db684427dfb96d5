import SkeinFederation
import SkeinMembership
import SkeinTestSupport
import Testing

@testable import SkeinRelay

/// The gateway links of other networks: per network in node id order (the first is the
/// designated link), interest kept across a new GATEWAY, a version that moves with every link.
@Suite struct ForeignGatewaysTests {
    let exports = ExportTable([ExportRule(kinds: .request, pattern: "svc")])

    @Test func linksPerNetworkInNodeOrderTheFirstDesignated() {
        var gateways = ForeignGateways()
        #expect(gateways.isEmpty && gateways.designatedLink(to: "us") == nil)
        gateways.link(testNode(9), network: "us", exports: exports)
        gateways.link(testNode(3), network: "us", exports: exports)
        gateways.link(testNode(5), network: "asia", exports: ExportTable())
        #expect(gateways.links(to: "us") == [testNode(3), testNode(9)] && gateways.designatedLink(to: "us") == testNode(3))
        #expect(gateways.version == 3 && gateways[testNode(5)]?.network == "asia")
        #expect(gateways.unlink(testNode(3))?.network == "us")
        #expect(gateways.designatedLink(to: "us") == testNode(9) && gateways.version == 4)
        #expect(gateways.unlink(testNode(3)) == nil && gateways.version == 4)
    }

    @Test func aNewGatewayFromALinkKeepsItsInterestAndMovesItsNetwork() {
        var gateways = ForeignGateways()
        gateways.link(testNode(1), network: "us", exports: exports)
        gateways.setInterest(testNode(1), ["news"], patterns: ["orders.*"])
        gateways.link(testNode(1), network: "eu", exports: ExportTable())
        #expect(gateways[testNode(1)]?.interest == ["news"] && gateways[testNode(1)]?.exports == ExportTable())
        #expect(gateways.interested(in: "orders.eu") == [testNode(1)] && gateways.interested(in: "news") == [testNode(1)])
        #expect(gateways.interested(in: "orders") == [])
        #expect(gateways.links(to: "us").isEmpty && gateways.links(to: "eu") == [testNode(1)])
        _ = gateways.unlink(testNode(1))
        #expect(gateways.isEmpty && gateways.links(to: "eu").isEmpty && gateways.interested(in: "orders.eu") == [])
    }
}
