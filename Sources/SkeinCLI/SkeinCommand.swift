import ArgumentParser

@main
struct SkeinCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "skein",
        abstract: "Skein: a decentralized, service-addressed messaging mesh.",
        discussion: """
            Applications address clusters and topics by name, never machines. Run `skein relay` on every host; use the other commands (or `import Skein`) to talk to the local relay.

            Exit codes:
              0    success
              1    the member answered with a fault
              3    timed out
              4    the relay is unreachable or closed the connection
              5    protocol violation
              6    no members (the relay's early, distinct failures 6-9: Docs/skein-1.md)
              7    member lost
              8    network unreachable
              9    not exported
              64   usage error
              70   internal error
              73   keygen cannot create the key file
              78   the relay cannot use its key file or configuration
              141  standard output was closed (as for SIGPIPE)
            """,
        version: SkeinVersion.description,
        subcommands: [
            RelayCommand.self,
            RequestCommand.self,
            BroadcastCommand.self,
            PublishCommand.self,
            SubscribeCommand.self,
            SurveyCommand.self,
            ServeCommand.self,
            TunnelCommand.self,
            StatusCommand.self,
            MembersCommand.self,
            JoinCommand.self,
            KeygenCommand.self,
            SimulateCommand.self,
            VersionCommand.self,
        ]
    )
}

enum SkeinVersion {
    static let number = "0.1.0"
    static let description = "skein \(number) (relay protocol v1.0-draft2)"
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version.")

    func run() {
        print(SkeinVersion.description)
    }
}
