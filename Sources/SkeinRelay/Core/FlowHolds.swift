import NIOCore
import SkeinMembership
import SkeinWire

/// One relay's traffic of one stream: what a hold is about. Ordered by relay, then stream kind
/// and name, so frames sent for a set of holds go out in the same order on every run.
struct HoldKey: Hashable, Comparable {
    var relay: NodeID
    var stream: PeerFlowStream

    static func < (a: Self, b: Self) -> Bool {
        (a.relay, a.stream.kind.rawValue, a.stream.name) < (b.relay, b.stream.kind.rawValue, b.stream.name)
    }
}

/// Flow control across relays (Docs/mesh.md, "Flow control"), both halves. Pure.
///
/// - **Asked**: this relay queued events or broadcasts from another relay for a local receiver
///   whose output is blocked, so it asked that relay to hold that stream (HOLD). It asks once
///   per relay and stream while any receiver needs it, refreshes the hold before its lease ends,
///   and RELEASEs it when the last such receiver is writable again or gone.
/// - **Granted**: another relay asked this one to hold a stream. Until the lease ends or RELEASE
///   comes, every local connection that sends on that stream to that relay is paused (after its
///   frame went out), as it is for a full local receiver.
///
/// Holds are soft state: a lost HOLD is sent again at the next refresh, and a lost RELEASE ends
/// with the lease, so neither end can leave the other stuck.
struct FlowHolds {
    /// Per asked hold, the receivers that need it.
    private var asked: [HoldKey: Set<ConnectionID>] = [:]
    private var askedFor: [ConnectionID: Set<HoldKey>] = [:]
    /// Per granted hold, its end and the local connections it pauses.
    private var granted: [HoldKey: Grant] = [:]
    /// Granted holds per relay, to bound what one peer's HOLDs can make this relay keep.
    private var grantsByRelay: [NodeID: Int] = [:]
    /// Most holds one relay may have granted here at once; past it a new HOLD is ignored (that
    /// relay's receiver then falls back to `--slow-consumer-bytes`).
    static let maxGrantsPerRelay = 65_536

    struct Grant: Equatable {
        var until: NIODeadline
        var paused: Set<ConnectionID> = []
    }

    /// Whether this relay holds anything for another relay now (the hot path's only check).
    var hasGrants: Bool { !granted.isEmpty }
    var hasAsked: Bool { !asked.isEmpty }
    /// Every hold this relay asked for and still needs.
    var askedKeys: Dictionary<HoldKey, Set<ConnectionID>>.Keys { asked.keys }
    var grantCount: Int { granted.count }

    // MARK: Asked (this relay's receivers are blocked)

    /// `receiver`, blocked, was just given traffic of `key`. True if the hold is new: HOLD must
    /// go to `key.relay`.
    mutating func ask(_ key: HoldKey, for receiver: ConnectionID) -> Bool {
        guard askedFor[receiver, default: []].insert(key).inserted else { return false }
        return asked[key, default: []].insert(receiver).inserted && asked[key]!.count == 1
    }

    /// `receiver` is writable again or gone: the holds nobody needs now (RELEASE each).
    mutating func receiverDone(_ receiver: ConnectionID) -> [HoldKey] {
        guard let keys = askedFor.removeValue(forKey: receiver) else { return [] }
        var released: [HoldKey] = []
        for key in keys {
            asked[key]?.remove(receiver)
            if asked[key]?.isEmpty == true {
                asked[key] = nil
                released.append(key)
            }
        }
        return released.sorted()
    }

    // MARK: Granted (another relay's receivers are blocked)

    /// `relay` asks to hold `stream` until `until` (a refresh moves the end). False if the relay
    /// already has `maxGrantsPerRelay` other holds here: nothing is recorded.
    mutating func grant(_ key: HoldKey, until: NIODeadline) -> Bool {
        if granted[key] != nil {
            granted[key]!.until = until
            return true
        }
        guard grantsByRelay[key.relay, default: 0] < Self.maxGrantsPerRelay else { return false }
        granted[key] = Grant(until: until)
        grantsByRelay[key.relay, default: 0] += 1
        return true
    }

    @discardableResult
    private mutating func removeGrant(_ key: HoldKey) -> Grant? {
        guard let grant = granted.removeValue(forKey: key) else { return nil }
        grantsByRelay[key.relay]! -= 1
        if grantsByRelay[key.relay] == 0 { grantsByRelay[key.relay] = nil }
        return grant
    }

    /// Whether traffic of `key` should pause its sender now.
    func isHeld(_ key: HoldKey) -> Bool { granted[key] != nil }

    /// `source` just sent on a held stream: true if it was not paused by this hold yet.
    mutating func pause(_ source: ConnectionID, by key: HoldKey) -> Bool {
        granted[key]?.paused.insert(source).inserted ?? false
    }

    /// RELEASE: the connections the hold paused.
    mutating func revoke(_ key: HoldKey) -> Set<ConnectionID> {
        removeGrant(key)?.paused ?? []
    }

    /// The lease that ended at `until` ends the hold, unless a refresh moved it: the connections
    /// it paused, or nil if it is still on (or gone).
    mutating func expire(_ key: HoldKey, until: NIODeadline) -> Set<ConnectionID>? {
        guard let grant = granted[key], grant.until == until else { return nil }
        removeGrant(key)
        return grant.paused
    }

    /// Whether the lease that ends at `until` is still the hold's (a timer is still live).
    func isLive(_ key: HoldKey, until: NIODeadline) -> Bool { granted[key]?.until == until }

    // MARK: Ends

    /// `relay` is gone (its link broke, it died or left): its holds end both ways. Returns the
    /// connections its grants paused.
    mutating func forget(relay: NodeID) -> [(HoldKey, Set<ConnectionID>)] {
        for (key, receivers) in asked where key.relay == relay {
            asked[key] = nil
            for receiver in receivers {
                askedFor[receiver]?.remove(key)
                if askedFor[receiver]?.isEmpty == true { askedFor[receiver] = nil }
            }
        }
        let ended = granted.filter { $0.key.relay == relay }
        for key in ended.keys { removeGrant(key) }
        return ended.map { ($0.key, $0.value.paused) }
    }

    /// `connection` closed: it pauses nothing more, and its asked holds are released.
    mutating func connectionGone(_ connection: ConnectionID, heldBy keys: Set<HoldKey>) -> [HoldKey] {
        for key in keys { granted[key]?.paused.remove(connection) }
        return receiverDone(connection)
    }
}
