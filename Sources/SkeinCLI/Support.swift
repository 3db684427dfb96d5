import Dispatch
import Foundation
import NIOCore

/// The pipe's writing end for `SignalTrap`'s handler; set before the handler is installed.
nonisolated(unsafe) private var signalTrapPipe: Int32 = -1

/// Runs `action` on SIGINT or SIGTERM instead of dying, until cancelled. One at a time.
///
/// A plain signal handler writes the signal's number to a pipe, and a thread of its own reads
/// it and runs `action`. The handler is in place when `onInterrupt` returns, so a command may
/// print `ready` right after and a signal sent then is never lost. (A DispatchSource is not:
/// it needs the signal ignored first and registers later, on libdispatch's manager thread, and
/// a signal that came in between was discarded; `skein subscribe` then never exited.)
final class SignalTrap: @unchecked Sendable {
    // @unchecked: the descriptors are constants; the reader thread owns `readEnd` after init.
    private let writeEnd: Int32

    private init(writeEnd: Int32) { self.writeEnd = writeEnd }

    static func onInterrupt(_ action: @escaping @Sendable () -> Void) -> SignalTrap {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { fatalError("pipe: \(String(cString: strerror(errno)))") }
        let (readEnd, writeEnd) = (fds[0], fds[1])
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // A full pipe already holds a pending interrupt: the handler must never block.
        _ = fcntl(writeEnd, F_SETFL, fcntl(writeEnd, F_GETFL) | O_NONBLOCK)
        signalTrapPipe = writeEnd

        Thread {
            var byte: UInt8 = 0
            while true {
                let n = read(readEnd, &byte, 1)
                if n == 1 { action(); continue }
                if n < 0 && errno == EINTR { continue }
                break  // cancelled: the writing end was closed
            }
            close(readEnd)
        }.start()

        var handler = sigaction()
        #if canImport(Glibc)
        handler.__sigaction_handler.sa_handler = signalTrapHandler
        #else
        handler.__sigaction_u.__sa_handler = signalTrapHandler
        #endif
        handler.sa_flags = SA_RESTART
        sigemptyset(&handler.sa_mask)
        for signo in [SIGINT, SIGTERM] {
            sigaction(signo, &handler, nil)
        }
        return SignalTrap(writeEnd: writeEnd)
    }

    func cancel() {
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        signalTrapPipe = -1
        close(writeEnd)
    }
}

/// Async-signal-safe: one write(2), errno preserved.
private func signalTrapHandler(_ signo: Int32) {
    let saved = errno
    var byte = UInt8(truncatingIfNeeded: signo)
    _ = write(signalTrapPipe, &byte, 1)
    errno = saved
}

/// Reads a file descriptor on a thread of its own (regular files and pipes alike) and hands
/// the chunks to async code, with at most `depth` chunks in flight.
struct DescriptorReader: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let stream: AsyncStream<ByteBuffer>
    private let credits: Credits

    init(fd: Int32, chunkSize: Int = 64 << 10, depth: Int = 8) {
        let credits = Credits(depth)
        let (stream, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
        self.stream = stream
        self.credits = credits
        let thread = Thread {
            var scratch = [UInt8](repeating: 0, count: chunkSize)
            while true {
                credits.wait()
                let n = scratch.withUnsafeMutableBytes { read(fd, $0.baseAddress, chunkSize) }
                if n < 0 && errno == EINTR { credits.signal(); continue }
                if n <= 0 { break }
                continuation.yield(ByteBuffer(bytes: scratch[0..<n]))
            }
            continuation.finish()
        }
        thread.start()
    }

    func makeAsyncIterator() -> Iterator { Iterator(base: stream.makeAsyncIterator(), credits: credits) }

    struct Iterator: AsyncIteratorProtocol {
        var base: AsyncStream<ByteBuffer>.Iterator
        let credits: Credits
        mutating func next() async -> ByteBuffer? {
            let chunk = await base.next()
            if chunk != nil { credits.signal() }
            return chunk
        }
    }
}

/// Writes all of `buffer` to a file descriptor; false if the descriptor is gone.
@discardableResult
func writeAll(_ fd: Int32, _ buffer: ByteBuffer) -> Bool {
    buffer.withUnsafeReadableBytes { bytes in
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }
}

/// A counting semaphore that, unlike DispatchSemaphore, may be released while taken.
final class Credits: @unchecked Sendable {
    // @unchecked: `available` is guarded by `condition`.
    private let condition = NSCondition()
    private var available: Int

    init(_ count: Int) { available = count }

    func wait() {
        condition.lock()
        while available == 0 { condition.wait() }
        available -= 1
        condition.unlock()
    }

    func signal() {
        condition.lock()
        available += 1
        condition.signal()
        condition.unlock()
    }
}
