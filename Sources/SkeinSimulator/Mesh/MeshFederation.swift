import NIOCore
import SkeinFederation
import SkeinRelay

/// Two networks in one simulation (`MeshScenario.networks == 2`): `eu` is the first half of the
/// relays, `us` the rest, each with its own membership. The first relay of each is a gateway,
/// and one gateway link joins the two: checked every 500 ms and dialed when it is down and both
/// gateways run (a stand-in for `GatewayLinkMachine`'s redials, which have tests of their own);
/// broken by a crash, a reset, or a long partition, like a peer link. Each network
/// exports cluster `svc` (requests, broadcasts, tunnels) and topic `t` to the other; cluster
/// `private` and topic `secret` exist in both and are exported by neither.
extension MeshSimulation {
    static let networkNames = ["eu", "us"]

    /// The first slot of `slot`'s network and how many relays it has.
    func networkSlots(_ slot: Int) -> (first: Int, size: Int) {
        guard scenario.networks > 1 else { return (0, scenario.relays) }
        let half = scenario.relays / 2
        return slot < half ? (0, half) : (half, scenario.relays - half)
    }

    func network(_ slot: Int) -> String {
        scenario.networks > 1 ? Self.networkNames[slot < scenario.relays / 2 ? 0 : 1] : "dev"
    }

    func otherNetwork(_ slot: Int) -> String {
        Self.networkNames[slot < scenario.relays / 2 ? 1 : 0]
    }

    func isGateway(_ slot: Int) -> Bool {
        scenario.networks > 1 && (slot == 0 || slot == scenario.relays / 2)
    }

    /// What the network of `slot` exports to the other one.
    func exports(from slot: Int) -> [ExportRule] {
        [ExportRule(kinds: [.request, .broadcast, .tunnel], pattern: "svc"), ExportRule(kinds: [.subscribe, .publish], pattern: "t")]
    }

    func settings(_ slot: Int) -> RelaySettings {
        var settings = RelaySettings()
        guard scenario.networks > 1 else { return settings }
        settings.federation.network = network(slot)
        if isGateway(slot) { settings.federation.exports = [otherNetwork(slot): ExportTable(exports(from: slot))] }
        return settings
    }

    /// Dials the gateway link when both gateways run and can reach each other and it is down;
    /// then checks again in 500 ms (one chain of checks for the whole run).
    mutating func maintainGatewayLink() {
        let (a, b) = (0, scenario.relays / 2)
        defer { if time < runEnd { push(time + 500_000_000, .gatewayCheck) } }
        let key = LinkKey(a, b)
        guard links[key] == nil, relays[a].loop != nil, relays[b].loop != nil,
            relays[a].state == .running, relays[b].state == .running, !blocked(a, b)
        else { return }
        nextLinkID += 1
        var link = SimLink(id: nextLinkID, key: key, initiator: a, processes: (relays[a].process, relays[b].process))
        link.isGateway = true
        links[key] = link
        linkKeys[link.id] = key
        report.dials += 1
        push(time + 2 * streamDelay(a, b), .linkUp(link.id))
    }
}
