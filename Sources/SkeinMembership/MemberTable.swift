import NIOCore

/// The parts of a member that change only with a new process or a new address: shared by
/// reference between its row, the updates about it and, in the simulator, between cores, so
/// a table of n members holds n references rather than n copies of every name and address.
final class MemberIdentity: Sendable, Equatable {
    let id: NodeID
    let name: String
    let address: MemberAddress
    /// Orders processes that used the same address (higher is newer).
    let generation: UInt64

    init(id: NodeID, name: String, address: MemberAddress, generation: UInt64) {
        self.id = id
        self.name = name
        self.address = address
        self.generation = generation
    }

    static func == (lhs: MemberIdentity, rhs: MemberIdentity) -> Bool {
        lhs === rhs
            || (lhs.id == rhs.id && lhs.generation == rhs.generation && lhs.address == rhs.address && lhs.name == rhs.name)
    }
}

/// One version of a member's metadata as received: decoded, and the bytes that answer pulls
/// and ride inline. Immutable, so rows and cores share it.
final class MetadataBody: Sendable {
    let version: UInt64
    let metadata: MemberMetadata
    let bytes: [UInt8]

    init(version: UInt64, metadata: MemberMetadata, bytes: [UInt8]) {
        self.version = version
        self.metadata = metadata
        self.bytes = bytes
    }
}

/// A member as a converged mesh knows it: alive at incarnation 0, with its first metadata
/// (version 1) held, which is what a completed join (push-pull, then metadata) leaves in every
/// other member's table. Built once and given to many cores (`Membership.init(…, knownMembers:)`,
/// the simulator's converged bootstrap), its name, address and metadata are shared between them.
public struct KnownMember: Sendable {
    let identity: MemberIdentity
    let body: MetadataBody
    /// The table's hashes of its id, address and name, computed once for every core.
    let hashes: MemberTable.Hashes

    public var id: NodeID { identity.id }

    /// - Throws: when `metadata`, `name` or the host exceed their limits.
    public init(
        id: NodeID, name: String, address: MemberAddress, generation: UInt64 = 0, metadata: MemberMetadata,
        maxMetadataBytes: Int = MembershipSettings.lan.maxMetadataBytes
    ) throws(MembershipError) {
        guard name.utf8.count <= MembershipWireLimits.maxNameBytes else { throw .nameTooLong(name.utf8.count) }
        guard address.host.utf8.count <= MembershipWireLimits.maxHostBytes else { throw .hostTooLong(address.host.utf8.count) }
        identity = MemberIdentity(id: id, name: name, address: address, generation: generation)
        hashes = MemberTable.Hashes(identity)
        body = MetadataBody(version: 1, metadata: metadata, bytes: try metadata.encoded(limit: maxMetadataBytes))
    }
}

/// One remote member's row (self is kept apart, in `Membership`). 48 bytes: what is shared or
/// rarely set lives elsewhere (identity and body by reference; accusers and last probe times in
/// small side tables of `Membership`).
struct MemberState: Sendable {
    var identity: MemberIdentity
    /// The newest metadata body held: nil until the first arrives.
    var body: MetadataBody?
    var incarnation: UInt64
    /// The newest metadata version this member is known to have published (may be newer than `body`).
    var metadataVersion: UInt64
    var changedAt: NIODeadline
    var status: MemberStatus

    init(identity: MemberIdentity, status: MemberStatus, incarnation: UInt64, metadataVersion: UInt64, body: MetadataBody? = nil, changedAt: NIODeadline) {
        self.identity = identity
        self.body = body
        self.incarnation = incarnation
        self.metadataVersion = metadataVersion
        self.changedAt = changedAt
        self.status = status
    }

    var id: NodeID { identity.id }
    var name: String { identity.name }
    var address: MemberAddress { identity.address }
    var generation: UInt64 { identity.generation }
    var heldMetadataVersion: UInt64 { body?.version ?? 0 }

    var member: Member {
        Member(
            id: id, name: name, address: address, status: status, incarnation: incarnation,
            metadataVersion: metadataVersion, metadata: body?.metadata)
    }

    var isLive: Bool { status == .alive || status == .suspect }
}

/// Rows in an array, found through three compact hash indexes of row numbers: by id (every
/// row), and by address and by name (the member that holds each, see `Docs/membership.md`,
/// "Rejoin" and "Name conflicts"). An index slot is 4 bytes and the keys are read from the
/// rows, so a member costs its 48-byte row plus about 20 bytes of index: at 10,000 members,
/// under 1 MB per table (Docs/simulator.md, "10,000 members"). Iteration follows row order,
/// which depends only on the order of inserts and removals, so a seed replays a run exactly.
struct MemberTable: Sendable, Sequence {
    private(set) var rows: [MemberState?] = []
    private var freeRows: [Int32] = []
    private var byID = RowIndex()
    private var byAddress = RowIndex()
    private var byName = RowIndex()
    private(set) var count = 0

    mutating func reserveCapacity(_ capacity: Int) {
        rows.reserveCapacity(capacity)
        byID.reserve(capacity)
        byAddress.reserve(capacity)
        byName.reserve(capacity)
    }

    func row(of id: NodeID) -> Int32? {
        byID.find(Self.hash(id)) { [rows] in rows[Int($0)]!.id == id }
    }

    func state(atRow row: Int32) -> MemberState? {
        rows[Int(row)]
    }

    /// Reads, updates (the id must stay the same), inserts or (nil) removes a member. An
    /// update that changes the address or the name gives up what the member held under the
    /// old ones; `designate` gives the new ones.
    subscript(id: NodeID) -> MemberState? {
        get { row(of: id).flatMap { rows[Int($0)] } }
        set {
            if let row = row(of: id) {
                let old = rows[Int(row)]!
                if let newValue {
                    precondition(newValue.id == id)
                    if old.identity !== newValue.identity {
                        if old.address != newValue.address { dropAddress(of: row, old.address) }
                        if old.name != newValue.name { dropName(of: row, old.name) }
                    }
                    rows[Int(row)] = newValue
                } else {
                    dropAddress(of: row, old.address)
                    dropName(of: row, old.name)
                    _ = byID.remove(row, hash: Self.hash(id))
                    rows[Int(row)] = nil
                    freeRows.append(row)
                    count -= 1
                }
            } else if let newValue {
                precondition(newValue.id == id)
                let row: Int32
                if let free = freeRows.popLast() {
                    row = free
                    rows[Int(row)] = newValue
                } else {
                    row = Int32(rows.count)
                    rows.append(newValue)
                }
                count += 1
                let rows = self.rows
                byID.insert(row, hash: Self.hash(id)) { Self.hash(rows[Int($0)]!.id) }
            }
        }
    }

    /// Adds a member known from a converged view (`Membership.init(…, knownMembers:)`): a new
    /// row, holding its address and name unless another row already does. One hash per key
    /// and no lookups through the subscript: a simulator builds 10⁸ rows this way.
    struct Hashes: Sendable {
        var id: UInt64
        var address: UInt64
        var name: UInt64

        init(_ identity: MemberIdentity) {
            id = MemberTable.hash(identity.id)
            address = MemberTable.hash(identity.address)
            name = MemberTable.hash(identity.name)
        }
    }

    mutating func appendKnown(_ state: MemberState, hashes: Hashes) {
        let idHash = hashes.id
        guard byID.find(idHash, { self.rows[Int($0)]!.id == state.id }) == nil else { return }
        let row = Int32(self.rows.count)
        self.rows.append(state)
        count += 1
        let all = self.rows
        byID.insert(row, hash: idHash) { Self.hash(all[Int($0)]!.id) }
        let addressHash = hashes.address
        if byAddress.find(addressHash, { all[Int($0)]!.address == state.address }) == nil {
            byAddress.insert(row, hash: addressHash) { Self.hash(all[Int($0)]!.address) }
        }
        let nameHash = hashes.name
        if byName.find(nameHash, { all[Int($0)]!.name == state.name }) == nil {
            byName.insert(row, hash: nameHash) { Self.hash(all[Int($0)]!.name) }
        }
    }

    /// The member that holds `address` (see `designate`).
    func holder(of address: MemberAddress) -> NodeID? {
        byAddress.find(Self.hash(address)) { [rows] in rows[Int($0)]!.address == address }.map { rows[Int($0)]!.id }
    }

    /// The member that holds `name`.
    func holder(ofName name: String) -> NodeID? {
        byName.find(Self.hash(name)) { [rows] in rows[Int($0)]!.name == name }.map { rows[Int($0)]!.id }
    }

    /// Makes `id` (whose row must carry `address`) the holder of its address, in place of any other.
    mutating func designate(address: MemberAddress, holder id: NodeID) {
        guard let row = row(of: id), rows[Int(row)]!.address == address else { return }
        if let current = byAddress.find(Self.hash(address), { [rows] in rows[Int($0)]!.address == address }) {
            if current == row { return }
            _ = byAddress.remove(current, hash: Self.hash(address))
        }
        let rows = self.rows
        byAddress.insert(row, hash: Self.hash(address)) { Self.hash(rows[Int($0)]!.address) }
    }

    /// Makes `id` (whose row must carry `name`) the holder of its name, in place of any other.
    mutating func designate(name: String, holder id: NodeID) {
        guard let row = row(of: id), rows[Int(row)]!.name == name else { return }
        if let current = byName.find(Self.hash(name), { [rows] in rows[Int($0)]!.name == name }) {
            if current == row { return }
            _ = byName.remove(current, hash: Self.hash(name))
        }
        let rows = self.rows
        byName.insert(row, hash: Self.hash(name)) { Self.hash(rows[Int($0)]!.name) }
    }

    private mutating func dropAddress(of row: Int32, _ address: MemberAddress) {
        _ = byAddress.remove(row, hash: Self.hash(address))
    }

    private mutating func dropName(of row: Int32, _ name: String) {
        _ = byName.remove(row, hash: Self.hash(name))
    }

    struct Iterator: IteratorProtocol {
        var base: IndexingIterator<[MemberState?]>

        mutating func next() -> MemberState? {
            while let slot = base.next() {
                if let state = slot { return state }
            }
            return nil
        }
    }

    func makeIterator() -> Iterator { Iterator(base: rows.makeIterator()) }

    var underestimatedCount: Int { count }

    // Deterministic hashes (Swift's `Hasher` is seeded per process, and nothing here may vary
    // between runs): SplitMix64's finalizer over the id, FNV-1a over strings.
    static func hash(_ id: NodeID) -> UInt64 { mix(id.high ^ (id.low &* 0x9E37_79B9_7F4A_7C15)) }

    static func hash(_ address: MemberAddress) -> UInt64 { mix(fnv(address.host) ^ UInt64(address.port)) }

    static func hash(_ name: String) -> UInt64 { mix(fnv(name)) }

    static func fnv(_ string: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in string.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        return hash
    }

    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Open-addressing (linear probing) hash set of row numbers; the keys live in the rows, so a
/// slot is 4 bytes. Kept at most three-quarters full (half after growing).
struct RowIndex: Sendable {
    static let empty: Int32 = -1
    static let deleted: Int32 = -2

    private var slots: [Int32] = []
    private(set) var count = 0
    private var tombstones = 0

    /// Sizes an empty index for `capacity` rows (a non-empty one grows as it fills).
    mutating func reserve(_ capacity: Int) {
        guard count == 0, capacity * 4 > slots.count * 3 else { return }
        slots = [Int32](repeating: Self.empty, count: Self.capacity(for: capacity))
        tombstones = 0
    }

    /// The first row, probing from `hash`, for which `matches` holds.
    func find(_ hash: UInt64, _ matches: (Int32) -> Bool) -> Int32? {
        guard !slots.isEmpty else { return nil }
        let mask = slots.count - 1
        var index = Int(truncatingIfNeeded: hash) & mask
        while true {
            let row = slots[index]
            if row == Self.empty { return nil }
            if row >= 0 && matches(row) { return row }
            index = (index + 1) & mask
        }
    }

    /// Adds `row` under `hash`. `hashOf` gives every row's hash when the index grows.
    mutating func insert(_ row: Int32, hash: UInt64, hashOf: (Int32) -> UInt64) {
        if (count + tombstones + 1) * 4 > slots.count * 3 {
            rebuild(capacity: Self.capacity(for: count + 1), hashOf: hashOf)
        }
        let mask = slots.count - 1
        var index = Int(truncatingIfNeeded: hash) & mask
        while slots[index] >= 0 { index = (index + 1) & mask }
        if slots[index] == Self.deleted { tombstones -= 1 }
        slots[index] = row
        count += 1
    }

    /// Removes the slot that holds exactly `row`, probing from `hash` (its key's hash).
    mutating func remove(_ row: Int32, hash: UInt64) -> Bool {
        guard !slots.isEmpty else { return false }
        let mask = slots.count - 1
        var index = Int(truncatingIfNeeded: hash) & mask
        while true {
            let current = slots[index]
            if current == Self.empty { return false }
            if current == row {
                slots[index] = Self.deleted
                count -= 1
                tombstones += 1
                return true
            }
            index = (index + 1) & mask
        }
    }

    /// A power of two holding `count` at most half full.
    private static func capacity(for count: Int) -> Int {
        var capacity = 16
        while capacity < count * 2 { capacity *= 2 }
        return capacity
    }

    /// Rehashes every row into `capacity` slots (or the current number, if more), which also
    /// clears the tombstones of removed rows.
    private mutating func rebuild(capacity: Int, hashOf: (Int32) -> UInt64) {
        let old = slots
        slots = [Int32](repeating: Self.empty, count: max(capacity, slots.count))
        tombstones = 0
        let mask = slots.count - 1
        for row in old where row >= 0 {
            var index = Int(truncatingIfNeeded: hashOf(row)) & mask
            while slots[index] != Self.empty { index = (index + 1) & mask }
            slots[index] = row
        }
    }
}
