import DequeModule

/// Per cluster, the keys of what waits for a member there or for a relay that serves it
/// (requests, tunnel builds), oldest first. An entry whose request or build is gone stays until
/// it reaches the front (`prune`), so removing one is O(1) wherever it waits.
struct WaitingQueues {
    private var queues: [String: Deque<UInt64>] = [:]

    mutating func append(_ key: UInt64, cluster: String) {
        queues[cluster, default: []].append(key)
    }

    func has(_ cluster: String) -> Bool { queues[cluster] != nil }

    var clusters: Dictionary<String, Deque<UInt64>>.Keys { queues.keys }

    /// Takes a cluster's queue, to send what can go now; `giveBack` what cannot.
    mutating func take(_ cluster: String) -> Deque<UInt64>? {
        queues.removeValue(forKey: cluster)
    }

    mutating func giveBack(_ queue: Deque<UInt64>, cluster: String) {
        if !queue.isEmpty { queues[cluster] = queue }
    }

    /// Drops entries that no longer wait (`isLive` false: answered, timed out, their caller
    /// left) from the front of a cluster's queue, and the queue once empty: what waits for a
    /// cluster that never gets a member must not pile up.
    mutating func prune(_ cluster: String, isLive: (UInt64) -> Bool) {
        guard var queue = queues.removeValue(forKey: cluster) else { return }
        while let first = queue.first, !isLive(first) { queue.removeFirst() }
        if !queue.isEmpty { queues[cluster] = queue }
    }
}
