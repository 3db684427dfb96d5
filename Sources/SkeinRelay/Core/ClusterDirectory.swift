/// The members of one cluster on this relay, and the balancing choice among them.
///
/// Policy: least in-flight work first; among equals, round-robin; members whose output is
/// backed up are chosen only when every member is.
struct ClusterDirectory {
    private(set) var members: [ConnectionID] = []
    private var cursor = 0

    mutating func add(_ id: ConnectionID) {
        members.append(id)
    }

    mutating func remove(_ id: ConnectionID) {
        guard let index = members.firstIndex(of: id) else { return }
        members.remove(at: index)
        if index < cursor { cursor -= 1 }
        if cursor >= members.count { cursor = 0 }
    }

    /// Picks one member. `load` returns a member's in-flight count and whether it is writable.
    mutating func pick(load: (ConnectionID) -> (inFlight: Int, writable: Bool)) -> ConnectionID? {
        let count = members.count
        guard count > 0 else { return nil }
        var best = -1
        var bestCost = (1, Int.max)
        for offset in 0..<count {
            let index = (cursor + offset) % count
            let (inFlight, writable) = load(members[index])
            let cost = (writable ? 0 : 1, inFlight)
            if cost < bestCost {
                best = index
                bestCost = cost
                if cost == (0, 0) { break }
            }
        }
        cursor = (best + 1) % count
        return members[best]
    }
}
