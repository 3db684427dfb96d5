import DequeModule
import NIOCore
import SkeinMembership
import SkeinWire

extension RelayCore {
    struct PendingRequest {
        var caller: Caller
        var callerRequestID: UInt64
        var cluster: String
        var deadline: NIODeadline
        /// `skein/2` headers, carried with the body wherever it goes.
        var headers: [Header] = []
        /// Where the request is in its life; each stage holds only what it needs.
        /// Changed only by `RequestTable.move`, so what relays hold is always counted right.
        fileprivate(set) var stage: Stage

        enum Stage {
            /// Waiting for a member here or a relay that serves the cluster.
            case waiting(body: ByteBuffer)
            /// With a remote relay until it answers; it may answer "no members", and then the
            /// request goes elsewhere with its body.
            case forwarded(to: NodeID, body: ByteBuffer)
            /// Forwarded on a link that later broke: a member there may have it, so it is never
            /// sent again, but the relay's answer is still taken (and "no members" reroutes it).
            case inDoubt(at: NodeID, body: ByteBuffer)
            /// With a member here, which knows it by `id`.
            case handedOver(member: ConnectionID, id: UInt64)
            /// A member had it and was lost: never sent to a second one; the caller's timeout
            /// comes at the deadline.
            case lost
        }

        init(caller: Caller, callerRequestID: UInt64, cluster: String, deadline: NIODeadline, body: ByteBuffer) {
            self.caller = caller
            self.callerRequestID = callerRequestID
            self.cluster = cluster
            self.deadline = deadline
            self.stage = .waiting(body: body)
        }

        /// The body, while the request waits to be sent.
        var waitingBody: ByteBuffer? {
            if case .waiting(let body) = stage { body } else { nil }
        }

        /// The relay it was forwarded to, until that relay answers.
        var forwardedTo: NodeID? {
            switch stage {
            case .forwarded(let relay, _), .inDoubt(let relay, _): relay
            case .waiting, .handedOver, .lost: nil
            }
        }

        /// The member here that has it.
        var member: (ConnectionID, UInt64)? {
            if case .handedOver(let member, let id) = stage { (member, id) } else { nil }
        }

        /// It left this relay (to a member, or to another relay): a timeout is the member's.
        var leftThisRelay: Bool {
            if case .waiting = stage { false } else { true }
        }

        /// Relays that answered "no members" for it; not asked again until routing changes.
        var declinedBy: Set<NodeID> = []
        /// The caller wants early, distinct failures (`skein/1`) instead of waiting for the deadline.
        var failFast = false
        /// This relay chooses where the request goes (its caller is a local client, or another
        /// network's gateway); otherwise another relay of this network did, and it is only handed
        /// to a member here, or (for another network) sent over this relay's gateway links.
        var routesHere = false
        /// The other network `cluster` is in (`cluster` is then `name@network`), or nil.
        var network: String?
        /// Why the last relay that declined it did, for a `skein/1` caller's early answer.
        var refusal: PeerReplyOutcome?

        var localCaller: ConnectionID? {
            if case .local(let id) = caller { id } else { nil }
        }
    }


    /// The requests waiting for their answers, and what follows from their stages: how many
    /// each remote relay holds (routing prefers the relay with the fewest), and, per cluster,
    /// the queue of those waiting for a member. A request's stage changes only through `move`
    /// (and `insert`, `remove`), so the counts cannot drift from the stages.
    struct RequestTable {
        private var pending: [UInt64: PendingRequest] = [:]
        /// Requests forwarded to each relay and not yet answered by it (`forwarded`, `inDoubt`).
        private(set) var inFlight: [NodeID: Int] = [:]
        /// Per cluster, requests waiting for a member or a relay that serves it.
        private var waiting = WaitingQueues()

        var count: Int { pending.count }

        subscript(key: UInt64) -> PendingRequest? { pending[key] }

        /// Changes a request's other fields in place (its stage changes through `move`; the
        /// counts are taken again around `body`, so even a replaced request is counted right).
        mutating func update(_ key: UInt64, _ body: (inout PendingRequest) -> Void) {
            guard var request = pending.removeValue(forKey: key) else { return }
            count(request.stage, -1)
            body(&request)
            count(request.stage, 1)
            pending[key] = request
        }

        mutating func insert(_ request: PendingRequest, key: UInt64) {
            precondition(pending[key] == nil, "request key \(key) is in use")
            count(request.stage, 1)
            pending[key] = request
        }

        /// Removes a request; what it held with a relay is no longer in flight there.
        @discardableResult
        mutating func remove(_ key: UInt64) -> PendingRequest? {
            guard let request = pending.removeValue(forKey: key) else { return nil }
            count(request.stage, -1)
            return request
        }

        /// The request's next stage.
        mutating func move(_ key: UInt64, to stage: PendingRequest.Stage) {
            // One lookup: every request moves at least once on its way.
            guard let index = pending.index(forKey: key) else { return }
            count(pending.values[index].stage, -1)
            count(stage, 1)
            pending.values[index].stage = stage
        }

        /// `relay` declined the request, or never got it: back to waiting, with its body.
        mutating func decline(_ key: UInt64, by relay: NodeID) {
            switch pending[key]?.stage {
            case .forwarded(let at, let body) where at == relay, .inDoubt(let at, let body) where at == relay:
                move(key, to: .waiting(body: body))
            default:
                break
            }
        }

        /// `relay` is gone for good (dead, left): its count goes too, if nothing is with it.
        mutating func forget(_ relay: NodeID) {
            if inFlight[relay] == 0 { inFlight[relay] = nil }
        }

        /// The requests with `relay`, in key order.
        func forwarded(to relay: NodeID) -> [UInt64] {
            pending.filter { $0.value.forwardedTo == relay }.keys.sorted()
        }

        private mutating func count(_ stage: PendingRequest.Stage, _ delta: Int) {
            switch stage {
            case .forwarded(let relay, _), .inDoubt(let relay, _):
                // In place, one lookup; a relay's entry stays at 0 (one per relay ever asked).
                inFlight[relay, default: 0] += delta
            case .waiting, .handedOver, .lost:
                break
            }
        }

        // MARK: Waiting for a member

        mutating func wait(_ key: UInt64, cluster: String) { waiting.append(key, cluster: cluster) }

        func hasWaiting(_ cluster: String) -> Bool { waiting.has(cluster) }

        var waitingClusters: Dictionary<String, Deque<UInt64>>.Keys { waiting.clusters }

        mutating func takeWaiting(_ cluster: String) -> Deque<UInt64>? { waiting.take(cluster) }

        mutating func giveBack(_ queue: Deque<UInt64>, cluster: String) { waiting.giveBack(queue, cluster: cluster) }

        /// Drops requests that are gone from the front of a cluster's queue (`WaitingQueues.prune`).
        mutating func prune(_ cluster: String) {
            let pending = self.pending
            waiting.prune(cluster) { pending[$0] != nil }
        }
    }
}
