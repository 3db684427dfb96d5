import Testing
@testable import SkeinCrypto

@Suite struct KeyringTests {
    @Test func keyIDMatchesTheExistingHexID() {
        for key in [Fixture.keyA, Fixture.keyB, NetworkKey.generate()] {
            #expect(key.keyID.description == key.id)
            #expect(KeyID(bytes: key.keyID.bytes) == key.keyID)
        }
        #expect(KeyID(value: 0xab).description == "00000000000000ab")
        #expect(KeyID(bytes: [1, 2, 3]) == nil)
    }

    @Test func aSingleKeyFileIsAKeyring() throws {
        let keyring = try Keyring(fileContents: Fixture.keyA.fileContents)
        #expect(keyring.primary == Fixture.keyA)
        #expect(keyring.keys == [Fixture.keyA])
        #expect(keyring.primaryID == Fixture.keyA.keyID)
    }

    @Test func commentsBlankLinesAndOrder() throws {
        let text = """
            # rotation in progress: B is new
            \(Fixture.keyB.fileContents)
              \(Fixture.keyA.fileContents.uppercased().replacingPrefix())\r
            # old
            \(Fixture.keyC.fileContents)
            """
        let keyring = try Keyring(fileContents: text)
        #expect(keyring.primary == Fixture.keyB)
        #expect(keyring.keys == [Fixture.keyB, Fixture.keyA, Fixture.keyC])
        #expect(keyring.key(for: Fixture.keyC.keyID) == Fixture.keyC)
        #expect(keyring.key(for: KeyID(value: 42)) == nil)
    }

    @Test func duplicatesAreKeptOnceAtTheirFirstPosition() throws {
        let text = Fixture.keyA.fileContents + Fixture.keyB.fileContents + Fixture.keyA.fileContents + Fixture.keyB.fileContents
        #expect(try Keyring(fileContents: text).keys == [Fixture.keyA, Fixture.keyB])
        #expect(Keyring(primary: Fixture.keyA, accepted: [Fixture.keyA, Fixture.keyC, Fixture.keyC]).keys == [Fixture.keyA, Fixture.keyC])
    }

    @Test(arguments: ["", "\n\n", "# only a comment\n", "   \n# x\n"])
    func noKeysIsEmpty(text: String) {
        #expect(throws: KeyError.empty) { try Keyring(fileContents: text) }
    }

    @Test func malformedLinesNameTheirLine() {
        let good = Fixture.keyA.fileContents
        #expect(throws: KeyError.malformed("line 3: it does not start with skein-key-v1:")) {
            try Keyring(fileContents: good + "# c\nskein-key-v2:00\n")
        }
        #expect(throws: KeyError.malformed("line 2: expected 64 hex digits, found 63")) {
            try Keyring(fileContents: good + String(good.dropLast(2)) + "\n")
        }
        #expect(throws: KeyError.malformed("line 1: non-hex character in the key")) {
            try Keyring(fileContents: "skein-key-v1:" + String(repeating: "g", count: 64))
        }
    }

    @Test func loadsSeveralFilesInOrder() throws {
        let dir = TemporaryDirectory()
        let first = dir.write("primary.key", Fixture.keyB.fileContents)
        let second = dir.write("accepted.keys", "# still accepted\n" + Fixture.keyA.fileContents + Fixture.keyC.fileContents)
        let keyring = try Keyring.load(fromFiles: [first, second])
        #expect(keyring.keys == [Fixture.keyB, Fixture.keyA, Fixture.keyC])
        #expect(keyring.primary == Fixture.keyB)
    }

    @Test func loadRefusesWhatNetworkKeyRefuses() {
        let dir = TemporaryDirectory()
        let good = dir.write("good.key", Fixture.keyA.fileContents)
        let open = dir.write("open.key", Fixture.keyB.fileContents, mode: 0o644)
        let empty = dir.write("empty.key", "# nothing yet\n")
        let broken = dir.write("broken.key", "skein-key-v1:zz\n")
        #expect(throws: KeyError.tooPermissive(open, mode: 0o644)) { try Keyring.load(fromFiles: [good, open]) }
        #expect(throws: KeyError.inFile(empty, KeyError.empty.description)) { try Keyring.load(fromFiles: [good, empty]) }
        #expect(throws: KeyError.inFile(broken, KeyError.malformed("line 1: expected 64 hex digits, found 2").description)) {
            try Keyring.load(fromFiles: [broken])
        }
        #expect(throws: KeyError.empty) { try Keyring.load(fromFiles: []) }
        #expect(throws: KeyError.io(dir.path + "/missing", "No such file or directory")) {
            try Keyring.load(fromFiles: [dir.path + "/missing"])
        }
    }

    @Test func singleKeyLoadingStillWorks() throws {
        let dir = TemporaryDirectory()
        let file = dir.write("network.key", Fixture.keyA.fileContents)
        #expect(try NetworkKey.load(fromFile: file) == Fixture.keyA)
        let open = dir.write("open.key", Fixture.keyA.fileContents, mode: 0o640)
        #expect(throws: KeyError.tooPermissive(open, mode: 0o640)) { try NetworkKey.load(fromFile: open) }
    }
}

extension String {
    /// The key line with its (uppercased) prefix restored: uppercase hex digits are accepted.
    fileprivate func replacingPrefix() -> String {
        "skein-key-v1:" + String(dropFirst("skein-key-v1:".count).filter { $0 != "\n" })
    }
}
