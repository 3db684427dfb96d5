import ArgumentParser
import SkeinCrypto

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write a new random network key to a file readable only by its owner.",
        discussion: "Prints the key's public id. The file format is in Docs/keys.md.")

    @Option(name: [.short, .long], help: ArgumentHelp("Where to write the key.", valueName: "path"))
    var output = "skein.key"
    @Flag(name: .long, help: "Overwrite an existing file.") var force = false

    func run() throws {
        let key = NetworkKey.generate()
        do {
            try key.write(toFile: output, overwrite: force)
        } catch {
            printError("\(error)\(force ? "" : " (use --force to overwrite)")")
            throw ExitCode(73)  // EX_CANTCREAT
        }
        print("wrote \(output) (key id \(key.id))")
    }
}
