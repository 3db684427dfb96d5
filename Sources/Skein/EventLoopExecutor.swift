import NIOCore

/// Runs tasks on a connection's event loop, so a handler that does not block answers without
/// two thread hops (loop → task pool → loop) per request.
final class EventLoopExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = self.asUnownedTaskExecutor()
        eventLoop.execute {
            job.runSynchronously(on: executor)
        }
    }
}

/// Where a member's handlers run.
public enum HandlerExecution: Sendable, Hashable {
    /// On Swift's global concurrent executor (the default): a handler may block or compute at
    /// length without delaying the connection's I/O.
    case globalExecutor
    /// On the connection's event loop: the lowest latency and CPU for handlers that only
    /// compute briefly or await. A handler that blocks delays every connection on that loop.
    /// With a group of your own (`ConnectionOptions.eventLoopGroup`), shut it down only after
    /// the connection has closed and its handlers have returned.
    case eventLoop
}
