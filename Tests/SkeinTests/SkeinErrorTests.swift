import Skein
import Testing

/// `SkeinError` is a struct with an extensible `Code`: these pin what users match on and read.
@Suite struct SkeinErrorTests {
    /// One error of every code, with the description it has had since it was an enum case.
    static let examples: [(SkeinError, SkeinError.Code, String)] = [
        (.timedOut, .timedOut, "timed out"),
        (.remoteFault("boom"), .remoteFault, "remote fault: boom"),
        (.connectionClosed(reason: ""), .connectionClosed, "connection closed"),
        (.connectionClosed(reason: "relay shutting down"), .connectionClosed, "connection closed: relay shutting down"),
        (.denied("go away"), .denied, "relay refused the connection: go away"),
        (.protocolViolation("bad frame"), .protocolViolation, "protocol violation: bad frame"),
        (.tunnelClosed(reason: ""), .tunnelClosed, "tunnel closed"),
        (.tunnelClosed(reason: "member left"), .tunnelClosed, "tunnel closed: member left"),
        (.alreadySubscribed(topic: "news"), .alreadySubscribed, "already subscribed to topic \"news\""),
        (.cannotConnect("refused"), .cannotConnect, "cannot connect to the relay: refused"),
        (.invalidName("a member needs a non-empty cluster name"), .invalidName, "a member needs a non-empty cluster name"),
        (.messageTooLarge(size: 11, limit: 10), .messageTooLarge, "message of 11 bytes exceeds the limit of 10 bytes"),
        (.noMembers("echo"), .noMembers, "no members: echo"),
        (.memberLost("echo"), .memberLost, "member lost: echo"),
        (.networkUnreachable("mars"), .networkUnreachable, "network unreachable: mars"),
        (.notExported("secret@corp"), .notExported, "not exported: secret@corp"),
        (.relayFailure(reason: 42, detail: "new"), .relayFailure, "relay failure 42: new"),
    ]

    @Test func descriptionsAreUnchanged() {
        for (error, code, text) in Self.examples {
            #expect(error.description == text, "\(code)")
            #expect("\(error)" == text)
            #expect(error.code == code)
        }
    }

    @Test func codesAreDistinctAndNamed() {
        let codes = Self.examples.map(\.1)
        #expect(Set(codes).count == 15, "every code is its own")
        #expect(SkeinError.Code.timedOut == .timedOut)
        #expect(SkeinError.Code.timedOut != .memberLost)
        #expect(SkeinError.Code.noMembers.description == "noMembers")
        #expect(Set(codes.map(\.description)).count == 15)
    }

    @Test func equalityComparesCodeAndDetail() {
        #expect(SkeinError.noMembers("a") == .noMembers("a"))
        #expect(SkeinError.noMembers("a") != .noMembers("b"))
        #expect(SkeinError.noMembers("a") != .memberLost("a"), "same detail, other code")
        #expect(SkeinError.noMembers("a").code == SkeinError.noMembers("b").code)
        #expect(SkeinError.messageTooLarge(size: 11, limit: 10) != .messageTooLarge(size: 12, limit: 10))
        #expect(SkeinError.relayFailure(reason: 1, detail: "x") != .relayFailure(reason: 2, detail: "x"))
        #expect(Set([SkeinError.timedOut, .timedOut, .remoteFault("x")]).count == 2)
    }

    @Test func detailAndTypedAccessors() {
        #expect(SkeinError.timedOut.detail == "")
        #expect(SkeinError.remoteFault("boom").detail == "boom")
        #expect(SkeinError.connectionClosed(reason: "bye").detail == "bye")
        #expect(SkeinError.alreadySubscribed(topic: "news").detail == "news")
        #expect(SkeinError.relayFailure(reason: 42, detail: "new").detail == "new")

        let tooLarge = SkeinError.messageTooLarge(size: 11, limit: 10)
        #expect(tooLarge.messageSize == 11)
        #expect(tooLarge.messageSizeLimit == 10)
        #expect(tooLarge.relayFailureReason == nil)

        let failure = SkeinError.relayFailure(reason: 42, detail: "new")
        #expect(failure.relayFailureReason == 42)
        #expect(failure.messageSize == nil)
        #expect(SkeinError.timedOut.relayFailureReason == nil)
    }

    private func fail(_ error: SkeinError) throws { throw error }

    @Test func matchingInCatchClauses() {
        var caught = ""
        do {
            try fail(.noMembers("echo"))
        } catch let error as SkeinError where error.code == .timedOut {
            caught = "timedOut"
        } catch let error as SkeinError where error.code == .noMembers {
            caught = "noMembers \(error.detail)"
        } catch {
            caught = "other"
        }
        #expect(caught == "noMembers echo")

        do {
            try fail(.memberLost("x"))
        } catch SkeinError.Code.timedOut, SkeinError.Code.memberLost {
            caught = "retryable"
        } catch {
            caught = "other"
        }
        #expect(caught == "retryable")

        do {
            try fail(.remoteFault("boom"))
        } catch SkeinError.Code.timedOut {
            caught = "timedOut"
        } catch {
            caught = "other"
        }
        #expect(caught == "other", "a code pattern matches only its own code")

        struct NotSkein: Error {}
        #expect(!(SkeinError.Code.timedOut ~= NotSkein()))
    }

    @Test func switchingOnTheCodeNeedsADefault() {
        func kind(_ error: SkeinError) -> String {
            switch error.code {
            case .timedOut, .memberLost: "retry"
            case .remoteFault: "fault"
            default: "other"
            }
        }
        #expect(kind(.timedOut) == "retry")
        #expect(kind(.memberLost("m")) == "retry")
        #expect(kind(.remoteFault("f")) == "fault")
        #expect(kind(.denied("d")) == "other")
    }
}
