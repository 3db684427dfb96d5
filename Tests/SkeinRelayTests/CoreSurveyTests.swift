import NIOCore
import SkeinFederation
import SkeinMembership
import SkeinRouting
import SkeinWire
import Testing

@testable import SkeinRelay
import SkeinTestSupport

/// Surveys in the relay core (Docs/skein-2.md, "Surveys"): every member asked, on every relay
/// and across a gateway; each answer streamed back; one SURVEY END whose counts add up.
@Suite("Relay core: surveys (skein/2)")
struct CoreSurveyTests {
    static let q = ByteBuffer(string: "q")
    static let a = ByteBuffer(string: "a")
    static let h = [Header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]

    /// The member's request id for the survey it was just sent, from whichever frame it got.
    static func memberID(_ actions: [RelayAction], _ member: ConnectionID) -> UInt64? {
        switch actions.frames(to: member).first {
        case .request(let id, _, _)?, .hrequest(let id, _, _, _)?: id
        default: nil
        }
    }

    @Test("one relay: every member is asked in its own dialect; answers stream back; the end counts them")
    func local() throws {
        var d = CoreDriver()
        let iris = d.connect(cluster: "svc")
        let skein1 = d.connect(cluster: "svc", dialect: .skein1)
        let modern = d.connect(cluster: "svc", dialect: .skein2)
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.survey(id: 7, cluster: "svc", headers: Self.h, body: Self.q, timeoutMillis: 1000), from: caller)
        guard case .request(let irisID, Self.q, 1000)? = asked.frames(to: iris).first,
            case .request(_, Self.q, 1000)? = asked.frames(to: skein1).first,
            case .hrequest(let modernID, Self.h, Self.q, 1000)? = asked.frames(to: modern).first
        else {
            Issue.record("\(asked)")
            return
        }
        #expect(asked.frames(to: caller).isEmpty)
        let back = [Header("k", "v")]
        let first = d.send(.hreply(id: modernID, headers: back, outcome: .success(Self.a)), from: modern)
        #expect(first.frames(to: caller) == [.surveyAnswer(id: 7, headers: back, outcome: .success(Self.a))])
        let second = d.send(.reply(id: irisID, outcome: .fault("busy")), from: iris)
        #expect(second.frames(to: caller) == [.surveyAnswer(id: 7, headers: [], outcome: .fault("busy"))])
        // The last member goes away: it is lost, and the survey is over at once.
        let gone = d.lose(skein1)
        #expect(gone.frames(to: caller) == [.surveyEnd(id: 7, tally: SurveyTally(asked: 3, answered: 1, faulted: 1, lost: 1))])
        #expect(d.core.surveyCount == 0)
        // Nothing more for it: not at the deadline, and not a repeated answer.
        #expect(d.send(.reply(id: irisID, outcome: .success(Self.a)), from: iris).frames(to: caller).isEmpty)
        #expect(d.advance(.seconds(2)).frames(to: caller).isEmpty)
    }

    @Test("no member anywhere: SURVEY END with zeros at once")
    func nobody() {
        var d = CoreDriver()
        let caller = d.connect(dialect: .skein2)
        let out = d.send(.survey(id: 1, cluster: "svc", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        #expect(out.frames(to: caller) == [.surveyEnd(id: 1, tally: SurveyTally())])
        #expect(d.core.surveyCount == 0)
    }

    @Test("at the timeout, members that did not answer are lost, and their late answers dropped")
    func timeout() throws {
        var d = CoreDriver()
        let slow = d.connect(cluster: "svc", dialect: .skein2)
        let quick = d.connect(cluster: "svc", dialect: .skein2)
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.survey(id: 2, cluster: "svc", headers: [], body: Self.q, timeoutMillis: 500), from: caller)
        let quickID = try #require(Self.memberID(asked, quick))
        let slowID = try #require(Self.memberID(asked, slow))
        _ = d.send(.reply(id: quickID, outcome: .success(Self.a)), from: quick)
        #expect(d.advance(.milliseconds(499)).frames(to: caller).isEmpty)
        let ended = d.advance(.milliseconds(1))
        #expect(ended.frames(to: caller) == [.surveyEnd(id: 2, tally: SurveyTally(asked: 2, answered: 1, faulted: 0, lost: 1))])
        let late = d.send(.reply(id: slowID, outcome: .success(Self.a)), from: slow)
        #expect(late.frames(to: caller).isEmpty)
        #expect(late.reports == [.lateReplyDropped(slow)])
        #expect(slow != quick)
    }

    @Test("the caller leaves: the survey ends here; its members' answers are dropped")
    func callerGone() throws {
        var d = CoreDriver()
        let member = d.connect(cluster: "svc", dialect: .skein2)
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.survey(id: 3, cluster: "svc", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        let id = try #require(Self.memberID(asked, member))
        _ = d.lose(caller)
        #expect(d.core.surveyCount == 0)
        #expect(d.send(.reply(id: id, outcome: .success(Self.a)), from: member).effects.isEmpty)
    }

    @Test("SURVEY on a connection that did not negotiate skein/2 is a protocol violation", arguments: [ProtocolDialect.iris, .skein1])
    func notNegotiated(_ dialect: ProtocolDialect) {
        var d = CoreDriver()
        let member = d.connect(cluster: "svc")
        let c = d.connect(dialect: dialect)
        let out = d.send(.survey(id: 1, cluster: "svc", headers: [], body: Self.q, timeoutMillis: 1000), from: c)
        #expect(out.disconnected == [c] && out.frames(to: member).isEmpty)
    }

    @Test("a member's request ids for surveys and requests never collide")
    func sharedIDs() throws {
        var d = CoreDriver()
        let member = d.connect(cluster: "svc", dialect: .skein2)
        let caller = d.connect(dialect: .skein2)
        let survey = try #require(Self.memberID(d.send(.survey(id: 1, cluster: "svc", headers: [], body: Self.q, timeoutMillis: 1000), from: caller), member))
        let request = try #require(Self.memberID(d.send(.request(id: 2, cluster: "svc", body: Self.q, timeoutMillis: 1000), from: caller), member))
        #expect(survey != request)
        #expect(d.send(.reply(id: request, outcome: .success(Self.a)), from: member).frames(to: caller) == [.reply(id: 2, outcome: .success(Self.a))])
        #expect(
            d.send(.reply(id: survey, outcome: .success(Self.a)), from: member).frames(to: caller)
                == [.surveyAnswer(id: 1, headers: [], outcome: .success(Self.a)), .surveyEnd(id: 1, tally: SurveyTally(asked: 1, answered: 1))])
    }

    // MARK: - Across relays

    @Test("across relays: one SURVEY per relay with members; their answers stream through; their ends add up")
    func mesh() throws {
        var d = CoreDriver()
        let (r2, _) = d.relay(2, clusters: ["svc": 2])
        let (r3, _) = d.relay(3, clusters: ["svc": 1])
        _ = d.relay(4, clusters: ["other": 1])
        let member = d.connect(cluster: "svc", dialect: .skein2)
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.survey(id: 4, cluster: "svc", headers: Self.h, body: Self.q, timeoutMillis: 1000), from: caller)
        guard case .headed(Self.h, .survey(let key, "svc", 1000, Self.q))? = asked.peerFrames(to: r2).first else {
            Issue.record("\(asked)")
            return
        }
        #expect(asked.peerFrames(to: r3) == [.headed(headers: Self.h, frame: .survey(id: key, cluster: "svc", remainingMillis: 1000, body: Self.q))])
        #expect(asked.peerFrames.count == 2)
        let back = [Header("k", "r2")]
        let answer = d.peer(.headed(headers: back, frame: .surveyAnswer(id: key, outcome: .success(Self.a))), from: r2)
        #expect(answer.frames(to: caller) == [.surveyAnswer(id: 4, headers: back, outcome: .success(Self.a))])
        #expect(d.peer(.surveyEnd(id: key, tally: SurveyTally(asked: 2, answered: 1, faulted: 0, lost: 1)), from: r2).frames(to: caller).isEmpty)
        let id = try #require(Self.memberID(asked, member))
        _ = d.send(.reply(id: id, outcome: .fault("no")), from: member)
        // r3 had no member any more: its end says so.
        let ended = d.peer(.surveyEnd(id: key, tally: SurveyTally()), from: r3)
        #expect(ended.frames(to: caller) == [.surveyEnd(id: 4, tally: SurveyTally(asked: 3, answered: 1, faulted: 1, lost: 1))])
        // A frame from a relay the survey did not go to, or after its end, is dropped.
        #expect(d.peer(.surveyAnswer(id: key, outcome: .success(Self.a)), from: r2).effects.isEmpty)
    }

    @Test("a relay lost mid-survey: the members it advertised and did not answer for are lost")
    func relayLost() throws {
        var d = CoreDriver()
        let (r2, _) = d.relay(2, clusters: ["svc": 3])
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.survey(id: 5, cluster: "svc", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        guard case .survey(let key, _, _, _)? = asked.peerFrames(to: r2).first else {
            Issue.record("\(asked)")
            return
        }
        _ = d.peer(.surveyAnswer(id: key, outcome: .success(Self.a)), from: r2)
        // Suspect: it may still answer.
        #expect(d.removeRelay(r2, .suspect).frames(to: caller).isEmpty)
        let lost = d.removeRelay(r2, .linkBroken)
        #expect(lost.frames(to: caller) == [.surveyEnd(id: 5, tally: SurveyTally(asked: 3, answered: 1, faulted: 0, lost: 2))])
    }

    @Test("at the deadline, a relay that has not ended is held to the members it advertised")
    func relayTimeout() throws {
        var d = CoreDriver()
        let (r2, _) = d.relay(2, clusters: ["svc": 2])
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.survey(id: 6, cluster: "svc", headers: [], body: Self.q, timeoutMillis: 300), from: caller)
        #expect(asked.peerFrames(to: r2).count == 1)
        let ended = d.advance(.milliseconds(300))
        #expect(ended.frames(to: caller) == [.surveyEnd(id: 6, tally: SurveyTally(asked: 2, answered: 0, faulted: 0, lost: 2))])
    }

    @Test("a SURVEY from another relay: only the members here are asked; answers and the end go back to it")
    func remote() throws {
        var d = CoreDriver()
        let (r2, _) = d.relay(2, clusters: ["svc": 1])
        let m1 = d.connect(cluster: "svc", dialect: .skein2)
        let m2 = d.connect(cluster: "svc")
        let asked = d.peer(.headed(headers: Self.h, frame: .survey(id: 40, cluster: "svc", remainingMillis: 800, body: Self.q)), from: r2)
        #expect(asked.peerFrames.isEmpty)  // one hop: never on to a third relay
        let id1 = try #require(Self.memberID(asked, m1))
        let id2 = try #require(Self.memberID(asked, m2))
        #expect(asked.frames(to: m1) == [.hrequest(id: id1, headers: Self.h, body: Self.q, timeoutMillis: 800)])
        let back = [Header("k", "v")]
        let one = d.send(.hreply(id: id1, headers: back, outcome: .success(Self.a)), from: m1)
        #expect(one.peerFrames(to: r2) == [.headed(headers: back, frame: .surveyAnswer(id: 40, outcome: .success(Self.a)))])
        let two = d.send(.reply(id: id2, outcome: .fault("x")), from: m2)
        #expect(
            two.peerFrames(to: r2) == [
                .surveyAnswer(id: 40, outcome: .fault("x")), .surveyEnd(id: 40, tally: SurveyTally(asked: 2, answered: 1, faulted: 1)),
            ])
        // No member here (stale metadata there): the end at once, with zeros.
        let none = d.peer(.survey(id: 41, cluster: "nobody", remainingMillis: 800, body: Self.q), from: r2)
        #expect(none.peerFrames(to: r2) == [.surveyEnd(id: 41, tally: SurveyTally())])
    }

    // MARK: - Across a federation

    @Test("eu client to db@us: over this relay's gateway link, bare name; the other network's tally comes back whole")
    func federationOrigin() throws {
        var d = CoreDriver(network: "eu", node: 1)
        let (link, _) = d.link(1, network: "us", exports: usExports.rules)
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.survey(id: 8, cluster: "db@us", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        guard case .survey(let key, "db", 1000, Self.q)? = asked.peerFrames(to: link).first else {
            Issue.record("\(asked)")
            return
        }
        let answer = d.fromGateway(.surveyAnswer(id: key, outcome: .success(Self.a)), link)
        #expect(answer.frames(to: caller) == [.surveyAnswer(id: 8, headers: [], outcome: .success(Self.a))])
        let ended = d.fromGateway(.surveyEnd(id: key, tally: SurveyTally(asked: 4, answered: 1, faulted: 0, lost: 3)), link)
        #expect(ended.frames(to: caller) == [.surveyEnd(id: 8, tally: SurveyTally(asked: 4, answered: 1, faulted: 0, lost: 3))])
    }

    @Test("db@us failures: not exported (04) and no gateway (03) as REQUEST FAILED, never SURVEY END")
    func federationRefused() {
        var d = CoreDriver(network: "eu")
        let caller = d.connect(dialect: .skein2)
        let unreachable = d.send(.survey(id: 1, cluster: "db@us", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        #expect(unreachable.frames(to: caller) == [.requestFailed(id: 1, reason: .networkUnreachable, detail: "no gateway to network us is reachable")])
        let (g, _) = d.relay(5, gateways: ["us": usExports])
        let refused = d.send(.survey(id: 2, cluster: "cache@us", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        #expect(refused.frames(to: caller) == [.requestFailed(id: 2, reason: .notExported, detail: "cache is not exported by network us for request")])
        // Through this network's gateway: its refusal reaches the caller as REQUEST FAILED.
        let sent = d.send(.survey(id: 3, cluster: "db@us", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        guard case .survey(let key, "db@us", _, _)? = sent.peerFrames(to: g).first else {
            Issue.record("\(sent)")
            return
        }
        let failed = d.peer(.reply(id: key, outcome: .refused(.networkUnreachable, "no gateway to network us is reachable")), from: g)
        #expect(failed.frames(to: caller) == [.requestFailed(id: 3, reason: .networkUnreachable, detail: "no gateway to network us is reachable")])
        #expect(d.core.surveyCount == 0)
    }

    @Test("a gateway relays db@us from a relay of its network over its link, and the answers back")
    func federationRelayed() throws {
        var d = CoreDriver(network: "eu", node: 1)
        let (link, _) = d.link(1, network: "us", exports: usExports.rules)
        let (r2, _) = d.relay(2, clusters: [:])
        let asked = d.peer(.survey(id: 50, cluster: "db@us", remainingMillis: 900, body: Self.q), from: r2)
        guard case .survey(let key, "db", 900, Self.q)? = asked.peerFrames(to: link).first else {
            Issue.record("\(asked)")
            return
        }
        #expect(d.fromGateway(.surveyAnswer(id: key, outcome: .fault("f")), link).peerFrames(to: r2) == [.surveyAnswer(id: 50, outcome: .fault("f"))])
        let tally = SurveyTally(asked: 1, faulted: 1)
        #expect(d.fromGateway(.surveyEnd(id: key, tally: tally), link).peerFrames(to: r2) == [.surveyEnd(id: 50, tally: tally)])
        // The link breaks before the end: what crossed is all there is.
        let again = d.peer(.survey(id: 51, cluster: "db@us", remainingMillis: 900, body: Self.q), from: r2)
        guard case .survey(let key2, _, _, _)? = again.peerFrames(to: link).first else {
            Issue.record("\(again)")
            return
        }
        _ = d.fromGateway(.surveyAnswer(id: key2, outcome: .success(Self.a)), link)
        #expect(d.unlink(link).peerFrames(to: r2) == [.surveyEnd(id: 51, tally: SurveyTally(asked: 1, answered: 1))])
    }

    @Test("us, the exporting side: a survey from eu's gateway asks every member in us; one not exported is refused")
    func federationExporting() throws {
        var d = CoreDriver(network: "us", exports: ["eu": usExports], node: 1)
        let (g, _) = d.link(1, network: "eu")
        let (r2, _) = d.relay(2, clusters: ["db": 2])
        let member = d.connect(cluster: "db", dialect: .skein2)
        let asked = d.fromGateway(.survey(id: 60, cluster: "db", remainingMillis: 1000, body: Self.q), g)
        guard case .survey(let key, "db", _, Self.q)? = asked.peerFrames(to: r2).first else {
            Issue.record("\(asked)")
            return
        }
        let id = try #require(Self.memberID(asked, member))
        #expect(d.send(.reply(id: id, outcome: .success(Self.a)), from: member).peerFrames(to: g) == [.surveyAnswer(id: 60, outcome: .success(Self.a))])
        let ended = d.peer(.surveyEnd(id: key, tally: SurveyTally(asked: 2, answered: 2)), from: r2)
        #expect(ended.peerFrames(to: g) == [.surveyEnd(id: 60, tally: SurveyTally(asked: 3, answered: 3))])
        let refused = d.fromGateway(.survey(id: 61, cluster: "workers", remainingMillis: 1000, body: Self.q), g)
        #expect(refused.peerFrames(to: g) == [.reply(id: 61, outcome: .refused(.notExported, "cluster workers is not exported by network us to eu"))])
        #expect(refused.reports.contains(.federationRefused(network: "eu", kind: .request, name: "workers")))
    }

    // MARK: - Bounds and bad peers

    @Test("another relay has at most maxPendingRequests surveys here; past that, answered at once, its members counted lost")
    func boundPerRelay() throws {
        var d = CoreDriver { $0.maxPendingRequests = 1 }
        let (r2, _) = d.relay(2)
        let member = d.connect(cluster: "svc", dialect: .skein2)
        let first = d.peer(.survey(id: 1, cluster: "svc", remainingMillis: 1000, body: Self.q), from: r2)
        let id = try #require(Self.memberID(first, member))
        let second = d.peer(.survey(id: 2, cluster: "svc", remainingMillis: 1000, body: Self.q), from: r2)
        #expect(second.peerFrames(to: r2) == [.surveyEnd(id: 2, tally: SurveyTally(asked: 1, lost: 1))])
        #expect(second.frames(to: member).isEmpty && second.reports == [.surveyRefused(r2)])
        // Once the first ends, there is room again.
        _ = d.send(.reply(id: id, outcome: .success(Self.a)), from: member)
        let third = d.peer(.survey(id: 3, cluster: "svc", remainingMillis: 1000, body: Self.q), from: r2)
        #expect(Self.memberID(third, member) != nil)
    }

    @Test("a relay's end that does not add up is made consistent with the answers it streamed")
    func inconsistentEnd() throws {
        var d = CoreDriver()
        let (r2, _) = d.relay(2, clusters: ["svc": 1])
        let caller = d.connect(dialect: .skein2)
        let asked = d.send(.survey(id: 1, cluster: "svc", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        guard case .survey(let key, _, _, _)? = asked.peerFrames(to: r2).first else {
            Issue.record("\(asked)")
            return
        }
        _ = d.peer(.surveyAnswer(id: key, outcome: .success(Self.a)), from: r2)
        _ = d.peer(.surveyAnswer(id: key, outcome: .fault("f")), from: r2)
        // It claims nobody was asked and one was lost.
        let ended = d.peer(.surveyEnd(id: key, tally: SurveyTally(asked: 0, answered: 0, faulted: 0, lost: 1)), from: r2)
        #expect(ended.frames(to: caller) == [.surveyEnd(id: 1, tally: SurveyTally(asked: 2, answered: 1, faulted: 1, lost: 0))])
        #expect(SurveyTally(asked: .max, answered: 1) + SurveyTally(asked: 1) == SurveyTally(asked: .max, answered: 1))
    }

    @Test("db@us through a gateway whose dial failed: network unreachable, not an empty end")
    func federationNeverReached() {
        var d = CoreDriver(network: "eu")
        let (g, _) = d.relay(5, gateways: ["us": usExports])
        let caller = d.connect(dialect: .skein2)
        let sent = d.send(.survey(id: 9, cluster: "db@us", headers: [], body: Self.q, timeoutMillis: 1000), from: caller)
        #expect(sent.peerFrames(to: g).count == 1)
        let failed = d.removeRelay(g, .neverReached)
        #expect(failed.frames(to: caller) == [.requestFailed(id: 9, reason: .networkUnreachable, detail: "no gateway to network us is reachable")])
    }

    @Test("shutdown: surveys other relays sent here end at once, with what is known")
    func closeAll() throws {
        var d = CoreDriver(network: "us", exports: ["eu": usExports], node: 1)
        let (g, _) = d.link(1, network: "eu")
        _ = d.relay(2, clusters: ["db": 2])
        let member = d.connect(cluster: "db", dialect: .skein2)
        let asked = d.fromGateway(.survey(id: 70, cluster: "db", remainingMillis: 5000, body: Self.q), g)
        let id = try #require(Self.memberID(asked, member))
        _ = d.send(.reply(id: id, outcome: .success(Self.a)), from: member)
        var actions: [RelayAction] = []
        d.core.closeAll(reason: "relay shutting down", actions: &actions)
        #expect(actions.peerFrames(to: g) == [.surveyEnd(id: 70, tally: SurveyTally(asked: 3, answered: 1, faulted: 0, lost: 2))])
        #expect(d.core.surveyCount == 0)
    }
}
