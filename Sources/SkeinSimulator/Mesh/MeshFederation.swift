import NIOCore
import SkeinFederation
import SkeinRelay
import SkeinWire

/// Two networks in one simulation (`MeshScenario.networks == 2`): `eu` is the first half of the
/// relays, `us` the rest, each with its own membership. The first relay of each is a gateway,
/// and one gateway link joins the two. Each gateway's links are decided by its own
/// `GatewayLinkMachine` (the relay's: dials, redials with backoff, GATEWAY first, membership
/// never crosses); the link is broken by a crash, a reset, or a long partition, like a peer
/// link. Each network
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

    /// The other network's gateway (the first relay of the other half).
    func otherGateway(_ slot: Int) -> Int { slot == 0 ? scenario.relays / 2 : 0 }

    /// A gateway relay's process starts: its own `GatewayLinkMachine` dials the other gateway.
    mutating func startGateway(_ slot: Int) {
        relays[slot].gateway = GatewayLinkMachine(
            settings: .init(
                network: otherNetwork(slot), gateways: [relays[otherGateway(slot)].address.description], localNetwork: network(slot),
                exports: exports(from: slot), redial: .milliseconds(500), maxRedial: .seconds(5)),
            now: now)
        relays[slot].gatewayTimerAt = nil
        gatewayInput(.timer, at: slot, process: relays[slot].process)
    }

    /// Hands an input to a gateway's machine and carries out what it says. A paused relay's
    /// machine waits with the rest of it.
    mutating func gatewayInput(_ input: GatewayInput, at slot: Int, process: Int) {
        guard relays[slot].process == process, relays[slot].loop != nil, relays[slot].gateway != nil else { return }
        if relays[slot].state == .paused {
            push(max(relays[slot].pausedUntil, time + 1), .gateway(slot: slot, process: process, input))
            return
        }
        var machine = relays[slot].gateway!
        var actions: [GatewayLinkAction] = []
        let other = otherGateway(slot)
        switch input {
        case .timer:
            machine.timer(now: now, actions: &actions)
        case .linkUp(let id):
            guard let key = linkKeys[id], let link = links[key] else { return }
            let dialed = link.initiator == slot ? relays[other].address.description : nil
            machine.linkUp(UInt64(id), node: relays[other].node, advertised: relays[other].address.description, dialed: dialed, now: now, actions: &actions)
        case .frame(let id, .gateway(let network, let exports)):
            machine.gateway(network: network, exports: exports, on: UInt64(id), now: now, actions: &actions)
        case .frame(let id, let frame):
            machine.received(frame, on: UInt64(id), actions: &actions)
        case .linkDown(let id, let reason):
            machine.linkDown(UInt64(id), dialed: nil, graceful: false, reason: reason, now: now, actions: &actions)
        }
        relays[slot].gateway = machine
        for action in actions { performGateway(action, at: slot) }
    }

    mutating func performGateway(_ action: GatewayLinkAction, at slot: Int) {
        let process = relays[slot].process
        let other = otherGateway(slot)
        let key = LinkKey(slot, other)
        switch action {
        case .dial(let address):
            // One link per pair, as PeerLinks keeps: a dial meets the link already there.
            if let link = links[key] {
                relays[slot].gateway!.dialed(address, link: UInt64(link.id))
                return
            }
            let id = dial(from: slot, to: other, gateway: true)
            relays[slot].gateway!.dialed(address, link: UInt64(id))
        case .send(let id, let frame):
            guard let key = linkKeys[Int(id)], let link = links[key] else { return }
            if link.isUp { transmit(frame, on: key, from: slot) } else { links[key]!.queued.append((slot, frame)) }
        case .close(let id, _, _):
            if let key = linkKeys[Int(id)] { breakLink(key, notifyAfter: 0) }
        case .armTimer(let deadline):
            let at = max(Int64(deadline.uptimeNanoseconds), time)
            guard at <= runEnd else { return }
            if let armed = relays[slot].gatewayTimerAt, armed <= at, armed > time { return }
            relays[slot].gatewayTimerAt = at
            push(at, .gateway(slot: slot, process: process, .timer))
        case .linked(let node, let network, let exports):
            deliver(.gatewayLinked(node, network: network, exports: exports), to: slot, process: process)
        case .unlinked(let node):
            deliver(.gatewayUnlinked(node), to: slot, process: process)
        case .deliver(let node, let frame):
            deliver(.gatewayFrame(node, frame), to: slot, process: process)
        case .report(let event):
            report.relayEvents["gateway \(event.kindName)", default: 0] += 1
        }
    }
}

/// An input of a simulated gateway's `GatewayLinkMachine`.
enum GatewayInput {
    case timer
    case linkUp(Int)
    case frame(Int, PeerFrame)
    case linkDown(Int, reason: String)
}

extension GatewayLinkEvent {
    var kindName: String {
        switch self {
        case .linkUp: "link up"
        case .linkDown: "link down"
        case .wrongNetwork: "wrong network"
        case .frameBeforeGateway: "frame before GATEWAY"
        case .unreachable: "unreachable"
        }
    }
}
