import Foundation
import Histogram
import Skein

// MARK: - Flags (Go `flag` style, like nbench: `-name value` or `--name value`)

struct Flags {
    private var values: [String: String] = [:]
    private(set) var known: [String: String] = [:]  // name -> help

    init(_ arguments: [String]) throws {
        var i = 0
        while i < arguments.count {
            var arg = arguments[i]
            guard arg.hasPrefix("-") else { throw BenchError.usage("unexpected argument \(arg)") }
            while arg.hasPrefix("-") { arg.removeFirst() }
            if let eq = arg.firstIndex(of: "=") {
                values[String(arg[..<eq])] = String(arg[arg.index(after: eq)...])
            } else {
                guard i + 1 < arguments.count else { throw BenchError.usage("-\(arg) needs a value") }
                values[arg] = arguments[i + 1]
                i += 1
            }
            i += 1
        }
    }

    func string(_ name: String, _ fallback: String) -> String { values[name] ?? fallback }

    func int(_ name: String, _ fallback: Int) throws -> Int {
        guard let text = values[name] else { return fallback }
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")) else {
            throw BenchError.usage("-\(name) needs an integer, not \(text)")
        }
        return value
    }

    func double(_ name: String, _ fallback: Double) throws -> Double {
        guard let text = values[name] else { return fallback }
        guard let value = Double(text) else { throw BenchError.usage("-\(name) needs a number, not \(text)") }
        return value
    }

    /// Durations as Go writes them: 10s, 500ms, 2m, 30m, 1h (or a bare number of seconds).
    func seconds(_ name: String, _ fallback: Double) throws -> Double {
        guard let text = values[name] else { return fallback }
        let units: [(String, Double)] = [("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let value = Double(text.dropLast(suffix.count)) { return value * scale }
        }
        if let value = Double(text) { return value }
        throw BenchError.usage("-\(name) needs a duration like 10s, not \(text)")
    }

    func endpoints(_ name: String, _ fallback: String) throws -> [RelayEndpoint] {
        try string(name, fallback).split(separator: ",").map { text in
            guard let endpoint = RelayEndpoint(String(text)) else {
                throw BenchError.usage("-\(name): \(text) is not HOST:PORT or PORT")
            }
            return endpoint
        }
    }
}

enum BenchError: Error, CustomStringConvertible {
    case usage(String)
    case failed(String)
    var description: String {
        switch self {
        case .usage(let text): "usage: \(text)"
        case .failed(let text): text
        }
    }
}

// MARK: - Clocks

/// Monotonic nanoseconds: for every interval measured inside one process.
@inline(__always) func monoNs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Wall-clock nanoseconds since the epoch: for stamps compared across processes
/// (publisher start vs subscriber end), like Go's time.Now().UnixNano().
@inline(__always) func wallNs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Sleeps the calling *thread* (not a task) for about `ns`, with nanosleep(2) like nbench.
func threadSleep(ns: Int64) {
    guard ns > 0 else { return }
    var request = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}

func sleepTask(seconds: Double) async {
    guard seconds > 0 else { return }
    try? await Task.sleep(for: .nanoseconds(Int64(seconds * 1e9)))
}

// MARK: - Histograms (values in ns, reported in µs like nbench)

typealias LatencyHistogram = Histogram<UInt64>

func newHistogram() -> LatencyHistogram {
    LatencyHistogram(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
}

extension LatencyHistogram {
    mutating func recordNs(_ value: Int64) {
        record(UInt64(Swift.min(Swift.max(value, 1), 60_000_000_000)))
    }
}

/// Same keys as nbench's pct(): p50 p90 p99 p99.9 p99.99 max mean count, in µs.
func percentiles(_ h: LatencyHistogram) -> JSON {
    var fields: [(String, JSON)] = []
    for (name, q) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("p99.99", 99.99)] {
        fields.append((name, .number(h.totalCount == 0 ? 0 : Double(h.valueAtPercentile(q)) / 1e3)))
    }
    fields.append(("max", .number(h.totalCount == 0 ? 0 : Double(h.max) / 1e3)))
    fields.append(("mean", .number(h.totalCount == 0 ? 0 : h.mean / 1e3)))
    fields.append(("count", .number(Double(h.totalCount))))
    return .object(fields)
}

// MARK: - JSON output (one line on stdout, like nbench)

indirect enum JSON {
    case number(Double)
    case int(Int64)
    case string(String)
    case bool(Bool)
    case array([JSON])
    case object([(String, JSON)])
    case null

    var text: String {
        switch self {
        case .number(let d): return d.isFinite ? "\(d)" : "null"
        case .int(let i): return "\(i)"
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .string(let s): return Self.quote(s)
        case .array(let items): return "[" + items.map(\.text).joined(separator: ",") + "]"
        case .object(let fields): return "{" + fields.map { Self.quote($0.0) + ":" + $0.1.text }.joined(separator: ",") + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

func emit(_ fields: [(String, JSON)], label: String) {
    var fields = fields
    fields.append(("label", .string(label)))
    fields.append(("maxrss_kb", .int(Int64(maxRSSKiB()))))
    say(JSON.object(fields).text)
}

/// Prints a line and flushes stdout at once (the runner waits for READY lines in a file).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func complain(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

func maxRSSKiB() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss
}

/// nbench's hard bound on the process lifetime: exit 124 when it expires.
func armHardTimeout(seconds: Double) {
    let thread = Thread {
        threadSleep(ns: Int64(seconds * 1e9))
        complain("hard timeout")
        exit(124)
    }
    thread.start()
}

/// A fixed-size table of Int64 written by many tasks at distinct indices (each index exactly
/// once) and read only after an acquiring load proved every write happened.
final class SlotTable: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Int64>
    let count: Int
    init(count: Int) {
        self.count = count
        pointer = .allocate(capacity: Swift.max(count, 1))
        pointer.initialize(repeating: -1, count: Swift.max(count, 1))
    }
    deinit { pointer.deallocate() }
    subscript(i: Int) -> Int64 {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}
