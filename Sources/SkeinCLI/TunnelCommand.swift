import ArgumentParser
import NIOCore
import Skein

struct TunnelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tunnel",
        abstract: "Pipe stdin and stdout through a tunnel to one member of a cluster, like netcat.",
        discussion: """
            Each read from stdin (up to 64 KiB) is sent as one message; every message received is
            written to stdout. At end of stdin the tunnel stays open until the member closes it or
            nothing has arrived for --linger milliseconds, then closes.
            """)

    @OptionGroup var client: ClientOptions
    @Argument(help: "The cluster.") var cluster: String
    @Option(name: .long, help: ArgumentHelp("How long to wait for a member to accept, in milliseconds.", valueName: "ms"))
    var timeout = 5000
    @Option(name: .long, help: ArgumentHelp("Idle time after end of stdin before closing, in milliseconds.", valueName: "ms"))
    var linger = 1000

    func run() async throws {
        let timeout = try milliseconds(self.timeout, "--timeout")
        let linger = try milliseconds(self.linger, "--linger")
        do {
            let connection = try await client.connect()
            let tunnel = try await connection.tunnel(cluster: cluster, timeout: timeout)
            let activity = Activity()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    while let message = try await tunnel.receive() {
                        writeStdout(message)
                        await activity.touch()
                    }
                }
                group.addTask {
                    for await chunk in DescriptorReader(fd: 0) {
                        try await tunnel.send(chunk)
                        await activity.touch()
                    }
                    // End of stdin: wait for the far side to finish, then close.
                    while await activity.idle(for: linger) == false {
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    try await tunnel.close()
                }
                try await group.waitForAll()
            }
            try? await connection.close()
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
