import NIOCore
import SkeinMembership
import SkeinTestSupport
import Testing

@testable import SkeinRelay

/// The requests a relay holds: in-flight counts follow the stages, whatever the order of events.
@Suite struct RequestTableTests {
    typealias Request = RelayCore.PendingRequest
    let deadline = NIODeadline.uptimeNanoseconds(5_000_000_000)
    let a = testNode(1)
    let b = testNode(2)

    func request(_ cluster: String = "svc") -> Request {
        Request(caller: .local(ConnectionID(1)), callerRequestID: 7, cluster: cluster, deadline: deadline, body: ByteBuffer(string: "x"))
    }

    @Test func whatARelayHoldsIsCountedFromForwardToAnswerTimeoutOrReroute() {
        var table = RelayCore.RequestTable()
        for key in UInt64(1)...4 { table.insert(request(), key: key) }
        let body = ByteBuffer(string: "x")
        for key in UInt64(1)...3 { table.move(key, to: .forwarded(to: a, body: body)) }
        table.move(4, to: .forwarded(to: b, body: body))
        #expect(table.inFlight == [a: 3, b: 1])
        #expect(table.forwarded(to: a) == [1, 2, 3])
        // The link broke: still with a (in doubt), still counted.
        table.move(1, to: .inDoubt(at: a, body: body))
        #expect(table.inFlight[a] == 3)
        // a answered one, declined one (back to waiting, with its body), and one timed out.
        table.remove(2)
        table.decline(3, by: a)
        #expect(table[3]?.waitingBody == body)
        // Declining by a relay that does not hold it changes nothing.
        table.decline(4, by: a)
        #expect(table[4]?.forwardedTo == b)
        table.remove(1)
        #expect(table.inFlight[a] == 0 && table.inFlight[b] == 1)
        // A member had it and was lost: no relay holds it.
        table.move(4, to: .lost)
        #expect(table.inFlight.values.allSatisfy { $0 == 0 } && table.count == 2)
        #expect(table[4]?.leftThisRelay == true && table[3]?.leftThisRelay == false)
    }

    @Test func fieldsChangeInPlaceAndWaitingQueuesDropWhatIsGone() {
        var table = RelayCore.RequestTable()
        for key in UInt64(1)...3 {
            table.insert(request(), key: key)
            table.wait(key, cluster: "svc")
        }
        table.update(2) { $0.declinedBy.insert(a) }
        #expect(table[2]?.declinedBy == [a])
        // Even a request replaced whole in `update` is counted by its stage.
        table.update(3) { $0 = RelayCore.PendingRequest(caller: .relay(b), callerRequestID: 1, cluster: "svc", deadline: deadline, body: ByteBuffer()) }
        #expect(table.inFlight.values.allSatisfy { $0 == 0 })
        table.remove(1)
        table.remove(2)
        table.prune("svc")
        #expect(table.hasWaiting("svc"))
        #expect(table.takeWaiting("svc").map(Array.init) == [3])
        #expect(!table.hasWaiting("svc"))
        table.giveBack([], cluster: "svc")
        #expect(!table.hasWaiting("svc"))
        table.remove(3)
        table.wait(3, cluster: "svc")
        table.prune("svc")
        #expect(!table.hasWaiting("svc") && table.count == 0)
    }
}

@Suite struct WaitingQueuesTests {
    @Test func entriesThatAreGoneLeaveAsTheyReachTheFront() {
        var queues = WaitingQueues()
        for key in UInt64(1)...4 { queues.append(key, cluster: "svc") }
        let live: Set<UInt64> = [3]
        queues.prune("svc") { live.contains($0) }
        #expect(queues.take("svc").map(Array.init) == [3, 4])
        queues.giveBack([], cluster: "svc")
        #expect(!queues.has("svc") && queues.clusters.isEmpty)
        queues.append(9, cluster: "x")
        queues.prune("x") { _ in false }
        #expect(!queues.has("x"))
    }
}
