import Dispatch
import Foundation
import NIOCore

/// Runs `action` on SIGINT or SIGTERM instead of dying, until cancelled.
final class SignalTrap: @unchecked Sendable {
    // @unchecked: the sources are only touched at creation and in `cancel`.
    private let sources: [any DispatchSourceSignal]

    private init(sources: [any DispatchSourceSignal]) { self.sources = sources }

    static func onInterrupt(_ action: @escaping @Sendable () -> Void) -> SignalTrap {
        let sources = [SIGINT, SIGTERM].map { signo -> any DispatchSourceSignal in
            signal(signo, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signo, queue: .global())
            source.setEventHandler(handler: action)
            source.resume()
            return source
        }
        return SignalTrap(sources: sources)
    }

    func cancel() {
        for source in sources { source.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
    }
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
