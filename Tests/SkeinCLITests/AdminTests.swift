import Foundation
import Testing

@Suite("Admin endpoint", .timeLimit(.minutes(1)))
struct AdminTests {
    @Test("skein status prints the relay's state as aligned sections; --json prints the endpoint's JSON")
    func status() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let adminPort = try #require(relay.adminPort, "the relay logged no admin endpoint")
            let server = try await scope.serve(["echo", "--echo"], relay: relay)
            _ = server

            let text = try await scope.run(["status", "--admin", "127.0.0.1:\(adminPort)"])
            #expect(text.status == 0, "\(text.stderr)")
            let output = lines(text.stdoutText)
            #expect(output.first == "Relay", "\(text.stdoutText)")
            #expect(output.contains { cells($0) == ["network", "dev"] }, "\(text.stdoutText)")
            #expect(output.contains { cells($0).first == "keys" && cells($0).count == 2 })
            #expect(output.contains("Clients"))
            #expect(output.contains { cells($0) == ["connections", "1"] }, "\(text.stdoutText)")
            #expect(output.contains { cells($0) == ["clusters", "echo (1)"] }, "\(text.stdoutText)")
            #expect(output.contains { cells($0) == ["topics", "-"] })
            #expect(!output.contains("Mesh"), "a relay without --bind has no mesh section")
            #expect(!text.stdoutText.contains("{"), "not JSON")
            #expect(!text.stdoutText.contains("\u{1B}"), "no colour when stdout is not a terminal")
            // The values of a section start in one column.
            let clientRows = output.drop { $0 != "Clients" }.dropFirst().prefix { !$0.isEmpty }
            #expect(clientRows.count == 6)
            #expect(output.contains { cells($0) == ["surveys", "0"] }, "\(text.stdoutText)")
            let valueColumns = Set(clientRows.map { row in
                row.distance(from: row.startIndex, to: row.range(of: cells(row)[1], options: .backwards)!.lowerBound)
            })
            #expect(valueColumns.count == 1, "\(clientRows)")

            let outcome = try await scope.run(["status", "--json", "--admin", "127.0.0.1:\(adminPort)"])
            #expect(outcome.status == 0, "\(outcome.stderr)")
            let json = try JSONSerialization.jsonObject(with: outcome.stdout) as? [String: Any]
            let relayInfo = try #require(json?["relay"] as? [String: Any])
            #expect(relayInfo["network"] as? String == "dev")
            #expect((relayInfo["keys"] as? [String])?.count == 1)
            let clients = try #require(json?["clients"] as? [String: Any])
            #expect((clients["clusters"] as? [String: Any])?["echo"] as? Int == 1)
        }
    }

    @Test("/metrics serves Prometheus text with the relay's counters")
    func metrics() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let adminPort = try #require(relay.adminPort)
            _ = try await scope.run(["request", "nobody", "x", "--timeout", "100"] + relay.flag)
            let (data, _) = try await httpGet(port: adminPort, path: "/metrics")
            let text = String(decoding: data, as: UTF8.self)
            #expect(text.contains("skein_client_connections_total"))
            #expect(text.contains("skein_requests_timed_out_total"))
        }
    }

    @Test("unknown paths are 404, and an unreachable endpoint is a clear error")
    func errors() async throws {
        try await withScope { scope in
            let relay = try await scope.startRelay()
            let adminPort = try #require(relay.adminPort)
            let (_, status) = try await httpGet(port: adminPort, path: "/nope")
            #expect(status == 404)
            let (_, membersStatus) = try await httpGet(port: adminPort, path: "/members")
            #expect(membersStatus == 404)
            let join = try await scope.run(["join", "--admin", "127.0.0.1:\(adminPort)", "127.0.0.1:1"])
            #expect(join.status == 4)
            #expect(join.stderr.contains("not part of a mesh"))
            let outcome = try await scope.run(["status", "--admin", "127.0.0.1:1"])
            #expect(outcome.status == 4)
            #expect(outcome.stderr.contains("cannot reach the relay's admin endpoint"))
        }
    }

    @Test("a relay whose admin port is taken refuses to start and says why")
    func adminPortTaken() async throws {
        try await withScope { scope in
            let first = try await scope.startRelay()
            let adminPort = try #require(first.adminPort)
            let second = try scope.spawn(["relay", "--dev", "--client-port", "0", "--admin-port", "\(adminPort)"], name: "second")
            let status = try await second.waitForExit(within: .seconds(10))
            #expect(status != 0)
            #expect(second.stderr.contains("cannot listen for the admin endpoint"))
        }
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1, with a raw socket: the test checks the server, not a client library.
func httpGet(port: Int, path: String) async throws -> (body: [UInt8], status: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw HarnessError("connect to \(port) failed") }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard write(fd, request, request.count) == request.count else { throw HarnessError("write failed") }
    var response: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n <= 0 { break }
        response += chunk[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let headerEnd = text.range(of: "\r\n\r\n"), let statusLine = text.split(separator: "\r\n").first else {
        throw HarnessError("not an HTTP response: \(text.prefix(200))")
    }
    let status = Int(statusLine.split(separator: " ")[1]) ?? -1
    return (Array(text[headerEnd.upperBound...].utf8), status)
}
