internal import Instrumentation
internal import ServiceContextModule
import NIOCore
internal import SkeinWire

/// Message headers (`skein/2`): an ordered list of key/value strings that requests, replies,
/// broadcasts and publishes may carry. Keys are case-sensitive, at least one byte, and may
/// repeat. A relay limits their number and size (`--max-headers`, `--max-header-bytes`; 64 and
/// 16 KiB by default); a receiver on an older protocol gets the body without them.
///
/// ```swift
/// var headers: Headers = ["content-type": "application/json"]
/// headers.add("x-retry", "1")
/// headers["content-type"]   // "application/json"
/// ```
public struct Headers: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    var entries: [Header] = []

    public init() {}

    /// The pairs in order (a dictionary literal has no order beyond the one written).
    public init(dictionaryLiteral elements: (String, String)...) {
        entries = elements.map { Header($0.0, $0.1) }
    }

    public init(_ pairs: some Sequence<(key: String, value: String)>) {
        entries = pairs.map { Header($0.key, $0.value) }
    }

    init(_ entries: [Header]) { self.entries = entries }

    public var isEmpty: Bool { entries.isEmpty }
    public var count: Int { entries.count }

    /// The first value of `key`; setting replaces every value of `key` with one (nil removes them).
    public subscript(key: String) -> String? {
        get { entries.first { $0.key == key }?.value }
        set {
            guard let newValue else {
                entries.removeAll { $0.key == key }
                return
            }
            if let first = entries.firstIndex(where: { $0.key == key }) {
                entries[first].value = newValue
                var index = entries.index(after: first)
                while index < entries.endIndex {
                    if entries[index].key == key { entries.remove(at: index) } else { index += 1 }
                }
            } else {
                entries.append(Header(key, newValue))
            }
        }
    }

    /// Every value of `key`, in order.
    public func values(for key: String) -> [String] { entries.filter { $0.key == key }.map(\.value) }

    /// Adds a pair at the end, keeping any others of the same key.
    public mutating func add(_ key: String, _ value: String) { entries.append(Header(key, value)) }

    public func makeIterator() -> some IteratorProtocol<(key: String, value: String)> {
        entries.lazy.map { (key: $0.key, value: $0.value) }.makeIterator()
    }

    public var description: String { "[" + entries.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "]" }

    /// Why these headers cannot be sent (an empty key), or nil.
    var problem: String? { entries.contains { $0.key.isEmpty } ? "a header key is empty" : nil }
}

/// A body with headers: what a request with headers answers, and what a member may reply.
public struct Message: Sendable, Hashable {
    public var body: ByteBuffer
    public var headers: Headers

    public init(_ body: ByteBuffer, headers: Headers = Headers()) {
        self.body = body
        self.headers = headers
    }
}

/// Writes and reads trace context in headers for the instrument bootstrapped with
/// swift-distributed-tracing's `InstrumentationSystem` (W3C `traceparent` and `tracestate` with
/// an OpenTelemetry tracer): a request made inside a span continues in the member's handler.
struct HeadersInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout Headers) { carrier[key] = value }
}

struct HeadersExtractor: Extractor {
    func extract(key: String, from carrier: Headers) -> String? { carrier[key] }
}

extension Headers {
    /// `self` with the current task's trace context added (nothing without one, or without an
    /// instrument).
    func withTraceContext() -> Headers {
        guard let context = ServiceContext.current else { return self }
        var headers = self
        InstrumentationSystem.instrument.inject(context, into: &headers, using: HeadersInjector())
        return headers
    }

    /// The trace context these headers carry, on top of the task's own.
    var serviceContext: ServiceContext {
        var context = ServiceContext.current ?? .topLevel
        if !isEmpty { InstrumentationSystem.instrument.extract(self, into: &context, using: HeadersExtractor()) }
        return context
    }
}
