// Captures loopback traffic with an AF_PACKET socket while two relays talk, and shows that a
// marker that crosses between them never appears in cleartext on the relay-to-relay port.
import Foundation
import NIOConcurrencyHelpers
import SkeinCrypto
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every IPv4/IPv6 TCP or UDP packet seen on any interface while it runs (AF_PACKET, needs
/// CAP_NET_RAW: tests run as root here and in CI).
final class PacketCapture: @unchecked Sendable {
    struct Packet {
        var proto: UInt8  // 6 TCP, 17 UDP
        var sourcePort: UInt16
        var destinationPort: UInt16
        var payload: [UInt8]
    }

    private let fd: Int32
    private let packets = NIOLockedValueBox<[Packet]>([])
    private let running = NIOLockedValueBox(true)
    private let thread: Thread

    init() throws {
        let ethPAll = UInt16(0x0003)
        fd = socket(AF_PACKET, Int32(SOCK_RAW.rawValue), Int32(ethPAll.bigEndian))
        guard fd >= 0 else {
            throw HarnessError("cannot open an AF_PACKET socket (\(String(cString: strerror(errno)))): this test needs root (CAP_NET_RAW), as CI has")
        }
        var timeout = timeval(tv_sec: 0, tv_usec: 50_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var size: Int32 = 16 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        let fd = self.fd
        let packets = self.packets
        let running = self.running
        thread = Thread {
            var frame = [UInt8](repeating: 0, count: 1 << 17)
            while running.withLockedValue({ $0 }) {
                let n = recv(fd, &frame, frame.count, 0)
                guard n > 0, let packet = PacketCapture.parse(frame[0..<n]) else { continue }
                packets.withLockedValue { $0.append(packet) }
            }
        }
        thread.start()
    }

    /// Stops capturing and returns what was seen.
    func stop() -> [Packet] {
        running.withLockedValue { $0 = false }
        Thread.sleep(forTimeInterval: 0.1)
        close(fd)
        return packets.withLockedValue { $0 }
    }

    /// Ethernet (loopback frames carry a zero Ethernet header) → IPv4/IPv6 → TCP/UDP payload.
    static func parse(_ frame: ArraySlice<UInt8>) -> Packet? {
        let f = Array(frame)
        guard f.count > 14 else { return nil }
        let etherType = UInt16(f[12]) << 8 | UInt16(f[13])
        var offset = 14
        let proto: UInt8
        switch etherType {
        case 0x0800:
            guard f.count >= offset + 20 else { return nil }
            proto = f[offset + 9]
            offset += Int(f[offset] & 0x0f) * 4
        case 0x86dd:
            guard f.count >= offset + 40 else { return nil }
            proto = f[offset + 6]
            offset += 40
        default:
            return nil
        }
        guard proto == 6 || proto == 17, f.count >= offset + 8 else { return nil }
        let source = UInt16(f[offset]) << 8 | UInt16(f[offset + 1])
        let destination = UInt16(f[offset + 2]) << 8 | UInt16(f[offset + 3])
        let header = proto == 6 ? Int(f[offset + 12] >> 4) * 4 : 8
        guard f.count >= offset + header else { return nil }
        return Packet(proto: proto, sourcePort: source, destinationPort: destination, payload: Array(f[(offset + header)...]))
    }
}

extension Array where Element == UInt8 {
    func contains(bytes needle: [UInt8]) -> Bool {
        guard needle.count <= count else { return false }
        return (0...(count - needle.count)).contains { start in self[start..<(start + needle.count)].elementsEqual(needle) }
    }
}

@Suite("Capture: nothing between relays is cleartext", .timeLimit(.minutes(1)))
struct CaptureTests {
    @Test("a marker crossing between relays (names, clusters, topics) never appears on the peer port")
    func markerNeverInCleartext() async throws {
        let marker = "SKEIN-MARKER-\(UInt32.random(in: 0...UInt32.max))"
        let needle = Array(marker.utf8)
        let capture = try PacketCapture()
        var packets: [PacketCapture.Packet] = []
        var meshPorts: Set<UInt16> = []
        var clientPort: UInt16 = 0
        do {
            try await withScope { scope in
                let key = try scope.keyFile("net.key", keys: [NetworkKey.generate()])
                let a = try await scope.startMeshRelay("a", keyFile: key)
                let b = try await scope.startMeshRelay("b-\(marker)", keyFile: key, seeds: [a])
                meshPorts = [UInt16(a.meshPort), UInt16(b.meshPort)]
                clientPort = UInt16(b.clientPort)
                let server = try scope.spawn(["serve", marker, "--echo"] + b.relayFlag, name: "serve")
                try await server.waitForStderr("ready")
                let subscriber = try scope.spawn(["subscribe", "topic-\(marker)"] + b.relayFlag, name: "subscribe")
                try await subscriber.waitForStderr("ready")
                // The marker has crossed when A knows B by name, serving the cluster and the topic.
                try await waitFor("a to see the marker cluster and topic on b") {
                    let members = try await a.members()
                    guard let remote = members.first(where: { $0["name"] as? String == "b-\(marker)" }) else { return false }
                    let clusters = remote["clusters"] as? [String: Any] ?? [:]
                    let topics = remote["topics"] as? [String] ?? []
                    return clusters[marker] != nil && topics.contains("topic-\(marker)")
                }
            }
            packets = capture.stop()
        } catch {
            _ = capture.stop()
            throw error
        }

        let peerPackets = packets.filter { meshPorts.contains($0.sourcePort) || meshPorts.contains($0.destinationPort) }
        #expect(peerPackets.contains { $0.proto == 6 && !$0.payload.isEmpty }, "no TCP peer-link payload was captured")
        #expect(peerPackets.contains { $0.proto == 17 && !$0.payload.isEmpty }, "no UDP gossip payload was captured")
        #expect(!peerPackets.contains { $0.payload.contains(bytes: needle) }, "the marker appeared in cleartext on a peer port")
        // The same capture does see the marker where it is meant to be cleartext: the local
        // client protocol on loopback. So the search above could have found it.
        let clientPackets = packets.filter { $0.sourcePort == clientPort || $0.destinationPort == clientPort }
        #expect(clientPackets.contains { $0.payload.contains(bytes: needle) }, "the capture missed the cleartext client traffic")
    }
}
