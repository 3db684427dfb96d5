import ArgumentParser
import NIOCore
import Skein

struct TunnelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunnel",
        abstract: "Pipe stdin and stdout through a tunnel to one member of a cluster, like netcat.",
        discussion: """
            Each read from stdin (up to 64 KiB) is sent as one message; every message received is written to stdout. At end of stdin the tunnel stays open until the member closes it or nothing has arrived for --linger milliseconds, then closes. When the member closes the tunnel first, the command exits 0 without waiting for the end of stdin.
            """)

    @OptionGroup var client: ClientOptions
    @Argument(help: "The cluster.") var cluster: String
    @Option(name: .long, help: ArgumentHelp("How long to wait for a member to accept, in milliseconds.", valueName: "ms"))
    var timeout = 5000
    @Option(name: .long, help: ArgumentHelp("Idle time after end of stdin before closing, in milliseconds.", valueName: "ms"))
    var linger = 1000

    func validate() throws { try requireName(cluster, "cluster") }

    func run() async throws {
        let timeout = try milliseconds(self.timeout, "--timeout")
        let linger = try milliseconds(self.linger, "--linger")
        do {
            let connection = try await client.connect()
            let tunnel: Tunnel
            do {
                tunnel = try await connection.tunnel(cluster: cluster, timeout: timeout)
            } catch SkeinError.Code.timedOut {
                printError("no member of \(cluster.debugDescription) accepted the tunnel within \(self.timeout) ms")
                throw ExitCode(ExitStatus.timedOut)
            }
            let activity = Activity()
            try await withThrowingTaskGroup(of: Void.self) { group in
                // stdin → tunnel. Its errors are not reported here: a send fails only when the
                // tunnel has ended, and the receiving loop below learns how it ended.
                group.addTask {
                    do {
                        for await chunk in DescriptorReader(fd: 0) {
                            try await tunnel.send(chunk)
                            await activity.touch()
                        }
                        // End of stdin: wait for the far side to finish, then close.
                        while await activity.idle(for: linger) == false {
                            try await Task.sleep(for: .milliseconds(50))
                        }
                        try await tunnel.close()
                    } catch {}
                }
                // tunnel → stdout, until the tunnel ends: nil when it was closed gracefully (by
                // us after end of stdin, or by the member), an error when it failed.
                while let message = try await tunnel.receive() {
                    writeStdout(message)
                    await activity.touch()
                }
                // The member may have closed first: stop reading stdin (a blocked read stays on
                // its own thread, which exits with the process).
                group.cancelAll()
            }
            try? await connection.close()
        } catch let exit as ExitCode {
            throw exit
        } catch {
            throw ExitStatus.fail(error)
        }
    }
}

actor Activity {
    private var last = ContinuousClock.now
    func touch() { last = .now }
    func idle(for duration: Duration) -> Bool { ContinuousClock.now - last >= duration }
}
