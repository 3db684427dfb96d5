import SkeinMembership
import SkeinRelay

/// What one whole-mesh run did and whether every promise held (`skein simulate mesh`).
package struct MeshReport: Sendable {
    package struct Answers: Sendable, Equatable {
        package var replies = 0
        package var faults = 0
        package var timeouts = 0
        /// `skein/1` early failures by reason.
        package var failures: [String: Int] = [:]
        package var refusals: [String: Int] = [:]
        /// Requests that ended with their caller's connection (its relay crashed).
        package var connectionLost = 0
        /// Faults (counted in `faults`) that said "not exported".
        package var notExported = 0

        package var total: Int { replies + faults + timeouts + failures.values.reduce(0, +) + connectionLost }
    }

    package struct Tunnels: Sendable, Equatable {
        package var opened = 0
        package var accepted = 0
        package var built = 0
        package var buildsTimedOut = 0
        /// `skein/1` build failures by reason.
        package var buildsFailed: [String: Int] = [:]
        package var messagesDelivered = 0
        /// Closed gracefully at the member with every message delivered.
        package var completed = 0
        package var failedAtInitiator = 0
        package var failedAtMember = 0
        /// Failed at the member after the initiator's close had been acknowledged: the
        /// initiator cannot hear it (the relay acknowledges TUNNEL CLOSE at once, as Iris does).
        package var failedAfterClose = 0
        /// Ends still open when the run ended (recent ones; old ones are violations).
        package var openAtEnd = 0
    }

    package struct Violation: Sendable, Equatable {
        package var seconds: Double
        package var what: String
    }

    package var relays: Int
    package var networks: Int
    package var seed: UInt64
    package var seconds: Double
    package var loss: Double
    package var virtualSeconds = 0.0
    package var relayStarts = 0
    package var clients = 0
    /// Inputs handled by relay loops (client frames, peer frames, datagrams, link events, timers).
    package var inputs = 0
    package var clientFrames = 0
    package var peerFrames = 0
    package var datagrams = 0
    package var dials = 0
    package var dialsFailed = 0
    package var linksBroken = 0
    package var requests = 0
    package var publishes = 0
    package var broadcasts = 0
    package var answers = Answers()
    package var tunnels = Tunnels()
    /// Requests still within their time when the run ended.
    package var pendingAtEnd = 0
    package var eventsDelivered = 0
    /// Federated: events of the other network's topic delivered, and requests to the other
    /// network answered by its members.
    package var federatedEvents = 0
    package var federatedReplies = 0
    package var broadcastsDelivered = 0
    package var gaps = 0
    package var invariantChecks = 0
    package var faults: [String] = []
    /// Relay events by kind (membership status changes, reroutes, timeouts...).
    package var relayEvents: [String: Int] = [:]
    package var aliveViews: (seen: Int, pairs: Int) = (0, 0)
    package var violation: Violation?

    init(scenario: MeshScenario) {
        relays = scenario.relays
        networks = scenario.networks
        seed = scenario.seed
        seconds = scenario.seconds
        loss = scenario.network.datagramLoss
    }

    mutating func note(_ event: RelayEvent) {
        let key: String = switch event {
        case .membership(.statusChanged(let member, _)): "relay \(member.status.rawValue)"
        case .membership(.joined): "relay joined"
        case .membership(.removed): "relay forgotten"
        case .membership: "membership other"
        case .requestTimedOut: "request timed out"
        case .requestRerouted: "request rerouted"
        case .slowConsumer: "slow consumer"
        case .holdsRefused: "hold refused"
        case .surveyRefused: "survey refused"
        case .protocolViolation: "protocol violation"
        case .handshakeRejected: "handshake rejected"
        case .broadcastWithoutMembers: "broadcast without members"
        case .lateReplyDropped: "late reply dropped"
        case .metadataRejected: "metadata rejected"
        case .drained, .allClosed: "shutdown"
        case .handshakeCompleted, .connectionClosed: "connections"
        case .federationRefused, .federationDropped, .federationLinkChanged: "federation"
        }
        relayEvents[key, default: 0] += 1
    }

    package var passed: Bool { violation == nil }

    /// For people: the same seed prints the same text, byte for byte.
    package var text: String {
        var lines: [String] = []
        lines.append("mesh simulation: \(relays) relays\(networks > 1 ? " in \(networks) federated networks" : ""), seed \(seed), \(rounded(seconds, 1)) s of traffic, datagram loss \(rounded(loss * 100, 1)) %")
        lines.append("virtual time      \(rounded(virtualSeconds, 3)) s; relay processes started \(relayStarts); clients \(clients)")
        lines.append("loop inputs       \(inputs) (client frames out \(clientFrames), peer frames \(peerFrames), datagrams \(datagrams))")
        lines.append("peer links        \(dials) dialed, \(dialsFailed) dials failed, \(linksBroken) broken")
        lines.append("requests          \(requests) sent, \(answers.total) answered: \(answers.replies) replies, \(answers.timeouts) timeouts, "
            + "\(answers.faults) faults (\(answers.notExported) not exported), \(answers.failures.values.reduce(0, +)) skein/1 failures \(listing(answers.failures)), \(answers.connectionLost) with their connection; \(pendingAtEnd) pending at the end")
        lines.append("events            \(publishes) published, \(eventsDelivered) delivered, \(gaps) gaps (at most once; renewed subscriptions)")
        lines.append("broadcasts        \(broadcasts) sent, \(broadcastsDelivered) delivered")
        if networks > 1 { lines.append("federation        \(federatedReplies) replies and \(federatedEvents) events from the other network; \(answers.notExported + (answers.failures["not exported"] ?? 0)) requests refused as not exported") }
        lines.append("tunnels           \(tunnels.opened) opened, \(tunnels.built) built, \(tunnels.buildsTimedOut + tunnels.buildsFailed.values.reduce(0, +)) builds failed \(listing(tunnels.buildsFailed)), "
            + "\(tunnels.completed) completed, failed at initiator \(tunnels.failedAtInitiator) / member \(tunnels.failedAtMember) (\(tunnels.failedAfterClose) after the initiator's close), \(tunnels.messagesDelivered) messages, \(tunnels.openAtEnd) open at the end")
        if !answers.refusals.isEmpty { lines.append("refusals          \(listing(answers.refusals))") }
        lines.append("relay events      \(listing(relayEvents))")
        lines.append("faults            \(faults.isEmpty ? "none" : faults.joined(separator: "; "))")
        lines.append("alive at the end  \(aliveViews.seen) of \(aliveViews.pairs) views of running relays")
        lines.append("invariant checks  \(invariantChecks)")
        if let violation {
            lines.append("VIOLATION at \(rounded(violation.seconds, 6)) s (seed \(seed)): \(violation.what)")
        } else {
            lines.append("every invariant held")
        }
        return lines.joined(separator: "\n")
    }

    /// For machines: one JSON object (SkeinRelay's `JSON`, the admin endpoint's encoder).
    package var json: String {
        func int(_ value: Int) -> JSON { .int(Int64(value)) }
        func object(_ counts: [String: Int]) -> JSON { .object(counts.keys.sorted().map { ($0, int(counts[$0]!)) }) }
        let fields: [(String, JSON)] = [
            ("relays", int(relays)), ("networks", int(networks)), ("seed", .int(Int64(bitPattern: seed))), ("seconds", .double(seconds)), ("loss", .double(loss)),
            ("virtualSeconds", .double(virtualSeconds)), ("relayStarts", int(relayStarts)), ("clients", int(clients)),
            ("inputs", int(inputs)), ("clientFrames", int(clientFrames)), ("peerFrames", int(peerFrames)), ("datagrams", int(datagrams)),
            ("dials", int(dials)), ("dialsFailed", int(dialsFailed)), ("linksBroken", int(linksBroken)),
            ("requests", int(requests)), ("answered", int(answers.total)), ("replies", int(answers.replies)), ("timeouts", int(answers.timeouts)),
            ("faultAnswers", int(answers.faults)), ("notExported", int(answers.notExported)), ("failures", object(answers.failures)), ("refusals", object(answers.refusals)),
            ("connectionLost", int(answers.connectionLost)), ("pendingAtEnd", int(pendingAtEnd)),
            ("publishes", int(publishes)), ("eventsDelivered", int(eventsDelivered)), ("gaps", int(gaps)),
            ("federatedReplies", int(federatedReplies)), ("federatedEvents", int(federatedEvents)),
            ("broadcasts", int(broadcasts)), ("broadcastsDelivered", int(broadcastsDelivered)),
            ("tunnels", .object([
                ("opened", int(tunnels.opened)), ("accepted", int(tunnels.accepted)), ("built", int(tunnels.built)),
                ("buildsTimedOut", int(tunnels.buildsTimedOut)), ("buildsFailed", object(tunnels.buildsFailed)),
                ("messagesDelivered", int(tunnels.messagesDelivered)), ("completed", int(tunnels.completed)),
                ("failedAtInitiator", int(tunnels.failedAtInitiator)), ("failedAtMember", int(tunnels.failedAtMember)),
                ("failedAfterClose", int(tunnels.failedAfterClose)),
                ("openAtEnd", int(tunnels.openAtEnd)),
            ])),
            ("relayEvents", object(relayEvents)), ("faults", .array(faults.map { .string($0) })),
            ("aliveSeen", int(aliveViews.seen)), ("alivePairs", int(aliveViews.pairs)), ("invariantChecks", int(invariantChecks)),
            ("violation", violation.map { .object([("seconds", .double($0.seconds)), ("what", .string($0.what))]) } ?? .null),
        ]
        return JSON.object(fields).serialized
    }
}

private func listing(_ counts: [String: Int]) -> String {
    counts.isEmpty ? "(none)" : "(" + counts.keys.sorted().map { "\($0) \(counts[$0]!)" }.joined(separator: ", ") + ")"
}
