import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinRouting
import SkeinWire

/// This relay's network and what it exports to the networks it federates with
/// (Docs/federation.md). Every relay knows its network (to read `name@network`); only gateways
/// use the exports.
public struct FederationPolicy: Sendable, Equatable {
    public var network: String
    /// What this network exports, per federated network: enforced on everything that enters
    /// through this relay's gateway links.
    public var exports: [String: ExportTable]

    public init(network: String = "default", exports: [String: ExportTable] = [:]) {
        self.network = network
        self.exports = exports
    }
}

// Federation (Docs/federation.md): `name@network` from local clients, from this network's relays
// to a gateway, and over gateway links into this network; exports; interest for subscriptions.
extension RelayCore {
    var network: String { settings.federation.network }

    // MARK: - Gateway links (from the shell)

    /// A gateway link to `node`, a gateway of `network`, is up and said what its network exports.
    public mutating func gatewayLinked(_ node: NodeID, network: String, exports: [ExportRule], now: NIODeadline, actions: inout [RelayAction]) {
        let wasReachable = !foreignLinks(to: network).isEmpty
        foreign.link(node, network: network, exports: ExportTable(exports))
        directoryVersion &+= 1  // this relay's gateways changed: its metadata says so
        if !wasReachable { actions.append(.report(.federationLinkChanged(network: network, up: true))) }
        refreshInterest(network: network, actions: &actions)
        dispatchWaitingRemote(network: network, now: now, actions: &actions)
    }

    /// The gateway link to `node` ended (`loss` says how: broken, or closed with a goodbye).
    public mutating func gatewayUnlinked(_ node: NodeID, loss: RelayLoss, now: NIODeadline, actions: inout [RelayAction]) {
        guard let gateway = foreign.unlink(node) else { return }
        sentInterest[node] = nil
        directoryVersion &+= 1
        relayUnavailable(node, loss, now: now, actions: &actions)
        if foreignLinks(to: gateway.network).isEmpty {
            actions.append(.report(.federationLinkChanged(network: gateway.network, up: false)))
        }
        refreshInterest(network: gateway.network, actions: &actions)
    }

    /// A frame from a linked gateway of another network. Everything that enters is checked
    /// against this network's exports to that network.
    public mutating func receivedFromGateway(
        _ frame: PeerFrame, headers: [Header] = [], from node: NodeID, now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard let gateway = foreign[node] else { return }
        switch frame {
        case .headed(let carried, let inner):
            receivedFromGateway(inner, headers: carried, from: node, now: now, actions: &actions)
        case .request(let id, let cluster, let remaining, let flags, let body):
            foreignRequest(
                from: node, gateway, id: id, cluster: cluster, remainingMillis: remaining, flags: flags, body: body, headers: headers,
                now: now, actions: &actions)
        case .reply, .surveyAnswer, .surveyEnd:
            receivedPeer(frame, headers: headers, from: node, now: now, actions: &actions)
        case .survey(let id, let cluster, let remaining, let body):
            foreignSurvey(
                from: node, gateway, id: id, cluster: cluster, remainingMillis: remaining, body: body, headers: headers, now: now,
                actions: &actions)
        case .broadcast(let cluster, let body):
            guard admits(.broadcast, cluster, from: node, gateway, actions: &actions) else { return }
            broadcastHere(cluster: cluster, body: body, headers: headers, from: nil, actions: &actions)
            if blockedConnections > 0, let members = clusters[cluster]?.members {
                queuedWhileBlocked(members, bytes: body.readableBytes, from: node, stream: .broadcast(cluster: cluster), now: now, actions: &actions)
            }
        case .publish(let topic, let body):
            guard admits(.publish, topic, from: node, gateway, actions: &actions) else { return }
            publishHere(topic: topic, body: body, headers: headers, from: nil, actions: &actions)
            if blockedConnections > 0 {
                queuedWhileBlocked(topics.subscribers(of: topic).connections, bytes: body.readableBytes, from: node, stream: .publish(topic: topic), now: now, actions: &actions)
            }
        case .event(let topic, let body):
            // An event of the other network's topic, for this network's interest in it: only from
            // the link this relay subscribed through, so a change of link never duplicates it.
            guard designatedLink(to: gateway.network) == node, isDesignatedGateway(for: gateway.network) else {
                actions.append(.report(.federationDropped(network: gateway.network, reason: "event from a gateway link not subscribed through")))
                return
            }
            let local = "\(topic)@\(gateway.network)"
            deliverRemoteEvent(topic: local, body: body, headers: headers, actions: &actions)
            if blockedConnections > 0 {
                queuedWhileBlocked(topics.subscribers(of: local).connections, bytes: body.readableBytes, from: node, stream: .event(topic: topic), now: now, actions: &actions)
            }
        case .interest(let topics, let patterns):
            foreignInterest(from: node, gateway, topics: topics, patterns: patterns, actions: &actions)
        case .hold, .release:
            flowControl(frame, from: node, now: now, actions: &actions)
        case .tunnelOpen(let id, let cluster, let remaining, let flags):
            foreignTunnelOpen(from: node, gateway, id: id, cluster: cluster, remainingMillis: remaining, flags: flags, now: now, actions: &actions)
        case .tunnelConfirm, .tunnelAllowance, .tunnelData, .tunnelClose:
            receivedPeer(frame, from: node, now: now, actions: &actions)
        case .hello, .ping, .pong, .goodbye, .membership, .gateway:
            break  // The shell's.
        }
    }

    // MARK: - Introspection

    /// The networks this relay is a gateway to (at least one established gateway link), each with
    /// what it exports to this network: advertised in this relay's metadata.
    public var gatewayAdvertisement: [String: [ExportRule]] {
        var out: [String: [ExportRule]] = [:]
        for node in foreign.all.keys.sorted() {
            let gateway = foreign[node]!
            if out[gateway.network] == nil { out[gateway.network] = gateway.exports.rules }
        }
        return out
    }

    /// Linked gateways of other networks, for `/status`: node, network, whether it is the
    /// designated link, the interest it registered here and the interest sent to it.
    public var foreignGatewayStatus: [(node: NodeID, network: String, designated: Bool, theirInterest: Int, ourInterest: Int)] {
        foreign.all.keys.sorted().map { node in
            let gateway = foreign[node]!
            return (node, gateway.network, designatedLink(to: gateway.network) == node, gateway.interest.count, sentInterest[node]?.count ?? 0)
        }
    }

    /// This relay's view of the designated gateway to `network` (itself: `localNode`), if any.
    public func designatedGateway(to network: String) -> NodeID? {
        let others = routing.gateways(to: network).min()
        if !foreignLinks(to: network).isEmpty, others.map({ localNode < $0 }) ?? true { return localNode }
        return others
    }

    /// What `network` exports to this one, as far as this relay knows.
    func knownExports(of network: String) -> ExportTable? {
        if let own = foreignLinks(to: network).first.flatMap({ foreign[$0]?.exports }) { return own }
        return routing.advertisedExports(of: network)
    }

    // MARK: - Choosing links

    /// Established gateway links to `network`, in node id order.
    func foreignLinks(to network: String) -> [NodeID] {
        foreign.links(to: network)
    }

    /// The link ordered traffic to `network` takes: to the remote gateway with the lowest node id.
    func designatedLink(to network: String) -> NodeID? {
        foreign.designatedLink(to: network)
    }

    func isDesignatedGateway(for network: String) -> Bool {
        designatedGateway(to: network) == localNode && !foreignLinks(to: network).isEmpty
    }

    /// Where a broadcast or publish to `network` goes from this relay, and the name it carries:
    /// its own designated link (bare name), or the designated gateway of this network.
    func orderedRoute(to network: String, name: FederatedName) -> (NodeID, String)? {
        if let link = designatedLink(to: network) { return (link, name.name) }
        if let gateway = designatedGateway(to: network), gateway != localNode { return (gateway, name.description) }
        return nil
    }

    // MARK: - Exports

    /// Whether this network exports `name` for `kind` to the network of `gateway`; a refusal is
    /// reported (logged and counted by the shell).
    mutating func admits(_ kind: ExportKinds, _ name: String, from node: NodeID, _ gateway: ForeignGateway, actions: inout [RelayAction]) -> Bool {
        let allowed = exported(kind, name, to: node, gateway)
        if !allowed { actions.append(.report(.federationRefused(network: gateway.network, kind: kind, name: name))) }
        return allowed
    }

    /// Whether this network exports `name` for `kind` to `gateway`'s network, unreported.
    mutating func exported(_ kind: ExportKinds, _ name: String, to node: NodeID, _ gateway: ForeignGateway) -> Bool {
        // Exports are fixed for the relay's life: the last decision holds for the same question
        // (a flood of events to one topic is checked once).
        let allowed: Bool
        if let last = lastAdmission, last.node == node, last.kind == kind, last.name == name {
            allowed = last.allowed
        } else {
            // No transit: a name of a third network never passes through.
            allowed = !FederatedName.isRemote(name, localNetwork: network)
                && settings.federation.exports[gateway.network]?.allows(kind, FederatedName(name, localNetwork: network).name) == true
            lastAdmission = (node, kind, name, allowed)
        }
        return allowed
    }

    /// The refusal for `kind` on `name` when the other network is known not to export it.
    func exportRefusal(_ kind: ExportKinds, _ name: FederatedName) -> (FailureReason, String)? {
        guard let network = name.network, let exports = knownExports(of: network), !exports.allows(kind, name.name) else { return nil }
        return (.notExported, "\(name.name) is not exported by network \(network) for \(kind)")
    }

    static func unreachable(_ network: String) -> String { "no gateway to network \(network) is reachable" }

    // MARK: - Requests

    /// Another relay of this network sends a request for `name@network` to this gateway.
    mutating func relayedRemoteRequest(
        from relay: NodeID, id: UInt64, name: FederatedName, remainingMillis: UInt64, flags: PeerRequestFlags, body: ByteBuffer,
        headers: [Header] = [], now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard let target = name.network, remainingMillis > 0 else {
            actions.append(.sendPeer(relay, .reply(id: id, outcome: .timedOut)))
            return
        }
        guard !foreignLinks(to: target).isEmpty else {
            actions.append(.sendPeer(relay, .reply(id: id, outcome: .refused(.networkUnreachable, Self.unreachable(target)))))
            return
        }
        let deadline = deadline(now: now, millis: remainingMillis)
        var request = PendingRequest(caller: .relay(relay), callerRequestID: id, cluster: name.description, deadline: deadline, body: body)
        request.headers = headers
        request.network = target
        request.failFast = flags.contains(.failFast)
        route(request, now: now, actions: &actions)
    }

    /// A request from another network for a cluster of this one: checked against the exports,
    /// then routed here as if a local client had asked.
    private mutating func foreignRequest(
        from node: NodeID, _ gateway: ForeignGateway, id: UInt64, cluster: String, remainingMillis: UInt64, flags: PeerRequestFlags,
        body: ByteBuffer, headers: [Header], now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard admits(.request, cluster, from: node, gateway, actions: &actions) else {
            let detail = "cluster \(cluster) is not exported by network \(network) to \(gateway.network)"
            actions.append(.sendPeer(node, .reply(id: id, outcome: .refused(.notExported, detail))))
            return
        }
        guard remainingMillis > 0 else {
            actions.append(.sendPeer(node, .reply(id: id, outcome: .timedOut)))
            return
        }
        let deadline = deadline(now: now, millis: remainingMillis)
        var request = PendingRequest(caller: .relay(node), callerRequestID: id, cluster: cluster, deadline: deadline, body: body)
        request.headers = headers
        request.routesHere = true
        request.failFast = flags.contains(.failFast)
        route(request, now: now, actions: &actions)
    }

    /// Sends a request for another network on: over this relay's own gateway link to it, or (when
    /// this relay routes it, and is no gateway to it) to a gateway of this network.
    mutating func dispatchRemote(_ key: UInt64, to target: String, excluding: Set<NodeID>, now: NIODeadline, actions: inout [RelayAction]) -> Bool {
        guard let request = requests[key] else { return false }
        let inFlight = requests.inFlight
        let links = foreignLinks(to: target).filter { !excluding.contains($0) }
        if let link = routing.pickTwo(links, inFlight: { inFlight[$0, default: 0] }) {
            forward(key, to: link, cluster: FederatedName(request.cluster, localNetwork: network).name, now: now, actions: &actions)
            return true
        }
        guard request.routesHere,
            let gateway = routing.pickGateway(to: target, excluding: excluding, inFlight: { inFlight[$0, default: 0] })
        else { return false }
        forward(key, to: gateway, cluster: request.cluster, now: now, actions: &actions)
        return true
    }

    /// Requests and builds for `network` that waited for a gateway: they go now.
    mutating func dispatchWaitingRemote(network target: String, now: NIODeadline, actions: inout [RelayAction]) {
        let suffix = "@\(target)"
        for cluster in requests.waitingClusters.filter({ $0.hasSuffix(suffix) }) + waitingBuilds.clusters.filter({ $0.hasSuffix(suffix) }) {
            dispatchWaiting(cluster: cluster, now: now, actions: &actions)
        }
    }

    /// Keeps a request another relay handed over until its deadline and sends it on its way,
    /// waiting for a member while there is none.
    private mutating func route(_ request: PendingRequest, now: NIODeadline, actions: inout [RelayAction]) {
        let key = makeKey()
        requests.insert(request, key: key)
        schedule(.request(key), at: request.deadline)
        if !dispatch(key, now: now, actions: &actions) { waitForMember(key, actions: &actions) }
    }

    /// `route` for a tunnel build.
    private mutating func route(_ build: PendingBuild, now: NIODeadline, actions: inout [RelayAction]) {
        let key = makeKey()
        builds[key] = build
        schedule(.build(key), at: build.deadline)
        if !dispatchBuild(key, now: now, actions: &actions) { waitForBuildMember(key, actions: &actions) }
    }

    // MARK: - Broadcast and publish

    /// A local client's broadcast or publish to `text`, a `name@network`: one copy on the ordered
    /// route, so FIFO per sender holds across the federation. The route is remembered by the
    /// text as the client wrote it (decoded names are interned, so a flood compares one pointer):
    /// a flood reads the name and its exports once.
    mutating func sendRemote(
        _ kind: ExportKinds, from sender: ConnectionID, text: String, body: ByteBuffer, headers: [Header] = [],
        actions: inout [RelayAction]
    ) {
        let route: RemoteSendRoute
        if remoteSendIsCached(text, kind) {
            route = lastRemoteSend!
        } else {
            let name = remoteName(text)
            guard let target = name.network else { return }
            let outcome: Result<(next: NodeID, carried: String), RemoteSendRefusal>
            if let (reason, detail) = exportRefusal(kind, name) {
                outcome = .failure(RemoteSendRefusal(reason: reason, detail: detail))
            } else if let (next, carried) = orderedRoute(to: target, name: name) {
                outcome = .success((next, carried))
            } else {
                outcome = .failure(RemoteSendRefusal(reason: .networkUnreachable, detail: Self.unreachable(target)))
            }
            route = RemoteSendRoute(
                name: text, kind: kind, network: target, federationVersion: foreign.version, routingVersion: routing.version,
                outcome: outcome)
            lastRemoteSend = route
        }
        switch route.outcome {
        case .failure(let refusal):
            let op: Opcode = kind == .broadcast ? .broadcast : .publish
            refuse(sender, op: op, name: text, reason: refusal.reason, detail: refusal.detail, network: route.network, actions: &actions)
        case .success(let (next, carried)):
            let frame: PeerFrame = kind == .broadcast ? .broadcast(cluster: carried, body: body) : .publish(topic: carried, body: body)
            actions.append(.sendPeer(next, frame.with(headers)))
            noteDelivery(from: sender, toRelay: next, stream: kind == .broadcast ? .broadcast(cluster: carried) : .publish(topic: carried), actions: &actions)
        }
    }

    /// Whether the last remote send's route is for `text` and still valid (so `text` is another
    /// network's name: only those are routed through `sendRemote`).
    func remoteSendIsCached(_ text: String, _ kind: ExportKinds) -> Bool {
        guard let last = lastRemoteSend else { return false }
        return last.name == text && last.kind == kind && last.federationVersion == foreign.version
            && last.routingVersion == routing.version
    }

    /// A relay of this network sends a broadcast or publish for `name@network` to this gateway.
    mutating func relayedRemoteSend(
        _ kind: ExportKinds, name: FederatedName, body: ByteBuffer, headers: [Header] = [], actions: inout [RelayAction]
    ) {
        guard let target = name.network else { return }
        guard let link = designatedLink(to: target) else {
            actions.append(.report(.federationDropped(network: target, reason: Self.unreachable(target))))
            return
        }
        let frame: PeerFrame = kind == .broadcast ? .broadcast(cluster: name.name, body: body) : .publish(topic: name.name, body: body)
        actions.append(.sendPeer(link, frame.with(headers)))
    }

    /// Tells a local client its broadcast, publish or subscribe was not carried out: `skein/1`
    /// hears REFUSED; for `v1.0-draft2` it is only counted.
    mutating func refuse(
        _ id: ConnectionID, op: Opcode, name: String, reason: FailureReason, detail: String, network target: String,
        actions: inout [RelayAction]
    ) {
        actions.append(.report(.federationDropped(network: target, reason: detail)))
        if connections[id]?.dialect.hasFailureFrames == true {
            actions.append(.send(id, .refused(opcode: op.rawValue, name: name, reason: reason, detail: detail)))
        }
    }

    /// A broadcast into this network's `cluster`: every member here and one copy to each relay
    /// of this network with members (`sender`, a local connection, is paused by full outputs).
    mutating func broadcastHere(
        cluster: String, body: ByteBuffer, headers: [Header] = [], from sender: ConnectionID?, actions: inout [RelayAction]
    ) {
        let remote = routing.relays(broadcastingTo: cluster)
        for relay in remote {
            actions.append(.sendPeer(relay, PeerFrame.broadcast(cluster: cluster, body: body).with(headers)))
            if let sender { noteDelivery(from: sender, toRelay: relay, stream: .broadcast(cluster: cluster), actions: &actions) }
        }
        guard let members = clusters[cluster]?.members else {
            if remote.isEmpty { actions.append(.report(.broadcastWithoutMembers(cluster: cluster))) }
            return
        }
        deliverBroadcast(body, headers: headers, to: members, from: sender, actions: &actions)
    }

    /// A broadcast to members here: with headers, `skein/2` members get HBROADCAST, older ones
    /// BROADCAST with the body unchanged.
    mutating func deliverBroadcast(
        _ body: ByteBuffer, headers: [Header], to members: [ConnectionID], from sender: ConnectionID?, actions: inout [RelayAction]
    ) {
        for member in members {
            if headers.isEmpty || connections[member]?.dialect != .skein2 {
                actions.append(.send(member, .broadcast(message: body)))
            } else {
                actions.append(.send(member, .hbroadcast(headers: headers, message: body)))
            }
            if let sender { noteDelivery(from: sender, to: member, actions: &actions) }
        }
    }

    /// A publish into this network's `topic`: every subscription here, one copy to each relay of
    /// this network with subscribers, and one event to each other network subscribed through
    /// this gateway.
    mutating func publishHere(
        topic: String, body: ByteBuffer, headers: [Header] = [], from publisher: ConnectionID?, actions: inout [RelayAction]
    ) {
        let route = publishRoute(topic)
        for relay in route.relays {
            actions.append(.sendPeer(relay, PeerFrame.publish(topic: topic, body: body).with(headers)))
            if let publisher { noteDelivery(from: publisher, toRelay: relay, stream: .publish(topic: topic), actions: &actions) }
        }
        sendEvent(topic: topic, body: body, headers: headers, to: route.subscribers, from: publisher, actions: &actions)
        if !foreign.isEmpty { deliverToInterest(topic: topic, body: body, headers: headers, from: publisher, actions: &actions) }
    }

    /// One event to each other network that subscribes to `topic` through this gateway.
    /// A network subscribed by a pattern gets only what this network exports to it: the pattern
    /// was not checked when it came, so the topic is, here (once per flood: `admits` remembers).
    mutating func deliverToInterest(
        topic: String, body: ByteBuffer, headers: [Header] = [], from publisher: ConnectionID?, actions: inout [RelayAction]
    ) {
        for node in foreign.interested(in: topic) {
            guard let gateway = foreign[node] else { continue }
            if !gateway.interest.contains(topic), !exported(.subscribe, topic, to: node, gateway) { continue }
            actions.append(.sendPeer(node, PeerFrame.event(topic: topic, body: body).with(headers)))
            if let publisher { noteDelivery(from: publisher, toRelay: node, stream: .event(topic: topic), actions: &actions) }
        }
    }

    /// An event of another network's topic (`topic@network`) arriving at this network's
    /// designated gateway: to its subscribers here and once to each relay with subscribers.
    /// (Not through `publishRoute`: its cache must only ever hold this network's topics.)
    mutating func deliverRemoteEvent(topic: String, body: ByteBuffer, headers: [Header] = [], actions: inout [RelayAction]) {
        for relay in routing.relays(subscribedTo: topic) {
            actions.append(.sendPeer(relay, PeerFrame.event(topic: topic, body: body).with(headers)))
        }
        sendEvent(topic: topic, body: body, headers: headers, to: topics.subscribers(of: topic), from: nil, actions: &actions)
    }

    /// A `topic@network` event from another relay of this network: delivered here only if that
    /// relay is the designated gateway to the network, so a change of gateway never duplicates.
    mutating func relayedRemoteEvent(
        topic: String, body: ByteBuffer, headers: [Header] = [], from relay: NodeID, now: NIODeadline, actions: inout [RelayAction]
    ) {
        let name = remoteName(topic)
        guard let target = name.network, designatedGateway(to: target) == relay else {
            actions.append(.report(.federationDropped(network: name.network ?? network, reason: "event from a relay that is not the designated gateway")))
            return
        }
        let subscribers = topics.subscribers(of: topic)
        sendEvent(topic: topic, body: body, headers: headers, to: subscribers, from: nil, actions: &actions)
        if blockedConnections > 0 {
            queuedWhileBlocked(subscribers.connections, bytes: body.readableBytes, from: relay, stream: .event(topic: topic), now: now, actions: &actions)
        }
    }

    /// `text` as a name, remembering the last one read (a flood names one topic).
    mutating func remoteName(_ text: String) -> FederatedName {
        if let last = lastRemoteName, last.text == text { return last.name }
        let name = FederatedName(text, localNetwork: network)
        lastRemoteName = (text, name)
        return name
    }

    // MARK: - Subscriptions (interest)

    /// Another network's complete set of topics and patterns it subscribes to through `node`.
    /// A topic this network does not export is refused here; a pattern is kept (with a valid
    /// form), and each event it matches is checked on its way out (`deliverToInterest`).
    private mutating func foreignInterest(
        from node: NodeID, _ gateway: ForeignGateway, topics wanted: [String], patterns: [String], actions: inout [RelayAction]
    ) {
        var accepted: Set<String> = []
        for topic in wanted where admits(.subscribe, topic, from: node, gateway, actions: &actions) {
            accepted.insert(topic)
        }
        let valid = Set(patterns.filter { TopicPattern.isPattern($0) && TopicPattern.problem(with: $0) == nil
            && !FederatedName.isRemote($0, localNetwork: network) })
        guard accepted != gateway.interest || valid != gateway.patterns else { return }
        foreign.setInterest(node, accepted, patterns: valid)
        directoryVersion &+= 1  // this relay now subscribes to them on the other network's behalf
    }

    /// Recomputes what this relay, as a gateway, asks `network` for: the designated gateway sends
    /// every `topic@network` subscribed to anywhere in this network on its designated link;
    /// every other link, and every gateway that is not designated, asks for nothing.
    mutating func refreshInterest(network target: String, actions: inout [RelayAction]) {
        let links = foreignLinks(to: target)
        guard !links.isEmpty || sentInterest.keys.contains(where: { foreign[$0]?.network == target }) else { return }
        var wanted = SentInterest()
        if isDesignatedGateway(for: target) {
            let suffix = "@\(target)"
            let exports = knownExports(of: target)
            for topic in topics.subscribedTopics where topic.hasSuffix(suffix) { wanted.topics.insert(String(topic.dropLast(suffix.count))) }
            for topic in routing.subscribedTopics where topic.hasSuffix(suffix) { wanted.topics.insert(String(topic.dropLast(suffix.count))) }
            if let exports { wanted.topics = wanted.topics.filter { exports.allows(.subscribe, $0) } }
            for pattern in topics.subscribedPatterns where pattern.hasSuffix(suffix) { wanted.patterns.insert(String(pattern.dropLast(suffix.count))) }
            for pattern in routing.subscribedPatterns where pattern.hasSuffix(suffix) { wanted.patterns.insert(String(pattern.dropLast(suffix.count))) }
        }
        let link = designatedLink(to: target)
        for node in links {
            let set = node == link ? wanted : SentInterest()
            guard sentInterest[node, default: SentInterest()] != set else { continue }
            sentInterest[node] = set
            actions.append(.sendPeer(node, .interest(topics: set.topics.sorted(), patterns: set.patterns.sorted())))
        }
    }

    /// After anything that may change who is designated or what is subscribed to.
    mutating func refreshAllInterest(actions: inout [RelayAction]) {
        guard !foreign.isEmpty else { return }
        for target in Set(foreign.all.values.map(\.network)).sorted() {
            refreshInterest(network: target, actions: &actions)
        }
    }

    /// Topics subscribed to on this relay for its metadata: its own connections' and, as a
    /// gateway, other networks' interest.
    var advertisedTopics: [String: Int] {
        var out = topics.counts
        for gateway in foreign.all.values {
            for topic in gateway.interest { out[topic, default: 0] += 1 }
        }
        return out
    }

    /// Patterns subscribed to on this relay for its metadata: its own connections' and, as a
    /// gateway, other networks'.
    var advertisedPatterns: Set<String> {
        var out = Set(topics.subscribedPatterns)
        for gateway in foreign.all.values { out.formUnion(gateway.patterns) }
        return out
    }

    // MARK: - Tunnels

    /// Another relay of this network opens a tunnel to `name@network` through this gateway.
    mutating func relayedRemoteTunnelOpen(
        from relay: NodeID, id: UInt64, name: FederatedName, remainingMillis: UInt64, flags: PeerRequestFlags, now: NIODeadline,
        actions: inout [RelayAction]
    ) {
        guard let target = name.network, remainingMillis > 0 else {
            actions.append(.sendPeer(relay, .tunnelConfirm(id: id, outcome: .failed("timed out"))))
            return
        }
        guard !foreignLinks(to: target).isEmpty else {
            actions.append(.sendPeer(relay, .tunnelConfirm(id: id, outcome: .refused(.networkUnreachable, Self.unreachable(target)))))
            return
        }
        let deadline = deadline(now: now, millis: remainingMillis)
        var build = PendingBuild(initiator: .relay(relay), initiatorTunnelID: id, cluster: name.description, deadline: deadline)
        build.network = target
        build.failFast = flags.contains(.failFast)
        route(build, now: now, actions: &actions)
    }

    /// A tunnel from another network to a cluster of this one.
    private mutating func foreignTunnelOpen(
        from node: NodeID, _ gateway: ForeignGateway, id: UInt64, cluster: String, remainingMillis: UInt64, flags: PeerRequestFlags,
        now: NIODeadline, actions: inout [RelayAction]
    ) {
        guard admits(.tunnel, cluster, from: node, gateway, actions: &actions) else {
            let detail = "cluster \(cluster) is not exported by network \(network) to \(gateway.network) for tunnels"
            actions.append(.sendPeer(node, .tunnelConfirm(id: id, outcome: .refused(.notExported, detail))))
            return
        }
        guard remainingMillis > 0 else {
            actions.append(.sendPeer(node, .tunnelConfirm(id: id, outcome: .failed("timed out"))))
            return
        }
        let deadline = deadline(now: now, millis: remainingMillis)
        var build = PendingBuild(initiator: .relay(node), initiatorTunnelID: id, cluster: cluster, deadline: deadline)
        build.routesHere = true
        build.failFast = flags.contains(.failFast)
        route(build, now: now, actions: &actions)
    }

    /// Sends a build for another network on, as `dispatchRemote` does a request.
    mutating func dispatchRemoteBuild(_ key: UInt64, to target: String, excluding: Set<NodeID>, now: NIODeadline, actions: inout [RelayAction]) -> Bool {
        guard let build = builds[key] else { return false }
        let inFlight = requests.inFlight
        let flags: PeerRequestFlags = build.failFast ? .failFast : []
        let remaining = remainingMillis(build.deadline, now)
        let links = foreignLinks(to: target).filter { !excluding.contains($0) }
        if let link = routing.pickTwo(links, inFlight: { inFlight[$0, default: 0] }) {
            builds[key]!.stage = .forwarded(to: link)
            let bare = FederatedName(build.cluster, localNetwork: network).name
            actions.append(.sendPeer(link, .tunnelOpen(id: key, cluster: bare, remainingMillis: remaining, flags: flags)))
            return true
        }
        guard build.routesHere,
            let gateway = routing.pickGateway(to: target, excluding: excluding, inFlight: { inFlight[$0, default: 0] })
        else { return false }
        builds[key]!.stage = .forwarded(to: gateway)
        actions.append(.sendPeer(gateway, .tunnelOpen(id: key, cluster: build.cluster, remainingMillis: remaining, flags: flags)))
        return true
    }
}
