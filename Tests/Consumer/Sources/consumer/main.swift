// Calls the binding as a user's program would: a member, a request, an error matched by code.
import NIOCore
import Skein

let endpoint = RelayEndpoint.unixSocket(path: CommandLine.arguments[1])
let member = try await Skein.serve(cluster: "consumer", to: endpoint) { request in request.body }
let client = try await Skein.connect(to: endpoint)
let reply = try await client.request(cluster: "consumer", "hello from a dependency", timeout: .seconds(5))
print(String(buffer: reply))
do {
    _ = try await client.request(cluster: "nobody-serves-this", "?", timeout: .milliseconds(200))
    print("unexpected: a reply from nobody")
} catch let error as SkeinError where error.code == .noMembers || error.code == .timedOut {
    print("no one answered: \(error)")
}
try await client.close()
try await member.close()
