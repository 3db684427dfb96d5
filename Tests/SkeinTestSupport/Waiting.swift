import SkeinMembership
import Testing

// What every test target shares: one way to wait on a condition, one way to make node ids.
// Tests wait on conditions with deadlines, never on sleeps alone.

/// Polls `condition` every `polling` until it holds; at the deadline records an issue naming
/// `what` and returns false. A condition that throws counts as not holding yet.
@discardableResult
public func eventually(
    within timeout: Duration = .seconds(10), polling: Duration = .milliseconds(5), _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation, _ condition: () async throws -> Bool
) async -> Bool {
    do {
        try await waitUntil(within: timeout, polling: polling, what) { (try? await condition()) == true }
        return true
    } catch {
        Issue.record("\(error)", sourceLocation: sourceLocation)
        return false
    }
}

/// Polls `condition` every `polling` until it holds, or throws `TimedOut` naming `what` at the
/// deadline (for harnesses that add their own context). An error the condition throws ends the
/// wait at once (a process that exited will never print); cancellation ends it with
/// `CancellationError`.
public func waitUntil(
    within timeout: Duration, polling: Duration = .milliseconds(10), _ what: String, _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return }
        guard ContinuousClock.now < deadline else { throw TimedOut(what: what, after: timeout) }
        try await Task.sleep(for: polling)
    }
}

/// A wait that ran out.
public struct TimedOut: Error, CustomStringConvertible {
    public var what: String
    public var after: Duration
    public var description: String { "timed out after \(after) waiting for \(what)" }
}

/// The node id tests use for relay or member `n` (of `group`, when a test needs two families of
/// ids that sort apart).
public func testNode(_ n: UInt64, group: UInt64 = 0) -> NodeID {
    NodeID(high: group, low: n)
}
