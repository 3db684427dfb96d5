import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinWire
import SkeinTestSupport
import Testing

@testable import SkeinRelay

/// `/status` assembled from plain snapshots: the shape of Docs/operations.md, with no relay running.
@Suite struct RelayStatusTests {
    @Test func theSnapshotRendersEverySection() {
        var core = RelayCore(settings: RelaySettings())
        var actions: [RelayAction] = []
        let now = NIODeadlineForTests.now
        core.connectionOpened(ConnectionID(1), now: now, actions: &actions)
        core.received(.initialize(magic: RelayProtocol.clientMagic, version: RelayProtocol.irisVersion, cluster: "svc"), from: ConnectionID(1), now: now, actions: &actions)
        let row = LinkRow(peer: "b", address: "10.0.0.2:7946", node: testNode(2), outbound: true, keyID: "k1", cipher: "aes-256-gcm")
        let status = RelayStatus(
            network: "eu", keys: ["k1"], clients: RelayStatus.Clients(core),
            federations: [RelayStatus.Federation(
                network: "us", listen: "10.0.0.1:7100", gateways: ["10.9.0.1:7100"], links: [(testNode(9), row)],
                core: [(testNode(9), "us", true, 2, 1)], weExport: [ExportRule(kinds: .request, pattern: "svc")], theyExport: nil, keys: ["f1"])],
            mesh: RelayStatus.Mesh(name: "a", node: testNode(1), address: "10.0.0.1:7946", zone: "z", links: [row]))
        let text = status.json.serialized
        #expect(text.hasPrefix(#"{"relay":{"protocol":"v1.0-draft2","extensions":["skein/1","skein/2"],"network":"eu","keys":["k1"]}"#))
        #expect(text.contains(#""clients":{"connections":1,"pendingRequests":0,"surveys":0,"tunnels":0,"clusters":{"svc":1},"topics":{},"patterns":{}}"#))
        #expect(text.contains(#""reachable":true"#) && text.contains(#""designated":true,"theirInterest":2,"ourInterest":1"#))
        #expect(text.contains(#""theyExport":null"#) && text.contains(#""weExport":["\#(ExportRule(kinds: .request, pattern: "svc"))"]"#))
        #expect(text.contains(#""mesh":{"name":"a","node":"00000000000000000000000000000001","address":"10.0.0.1:7946","zone":"z","links":[{"peer":"b","address":"10.0.0.2:7946","node":"00000000000000000000000000000002","direction":"outbound","keyId":"k1","cipher":"aes-256-gcm"}]}"#))
    }
}

enum NIODeadlineForTests {
    static let now = NIODeadline.uptimeNanoseconds(1_000_000_000)
}
