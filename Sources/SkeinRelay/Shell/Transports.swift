import SkeinMembership
import SkeinWire

// What the shells know of one another: nothing but these. The relay loop's host (`ClientServer`)
// takes inputs from every shell through `RelayInputSink` and carries out the loop's actions on
// the transports; no shell names another's type (Docs/architecture.md, "The relay loop").

/// Where a shell delivers what it heard. On the relay's event loop.
protocol RelayInputSink: AnyObject, Sendable {
    /// Handles the input and carries out what it causes at once.
    func input(_ input: RelayInput)
    /// Handles the input now; what it causes is carried out at `inputsComplete` (the frames of
    /// one socket read are handled together, and their output written once).
    func inputDeferred(_ input: RelayInput)
    /// `inputDeferred(.peerFrame(node, frame))`, for the hot path.
    func peerFrameDeferred(_ frame: PeerFrame, from node: NodeID)
    func inputsComplete()
}

/// Links that carry frames to relays by node id: a federation's gateway links.
protocol LinkTransport: AnyObject, Sendable {
    /// Queues the frame on the established link to `node`; false if there is none.
    func send(_ frame: PeerFrame, toNode node: NodeID) -> Bool
}

/// The mesh's links and gossip socket.
protocol MeshTransport: LinkTransport {
    /// Queues the frame on the link to the relay listening at `address`, dialing one if needed.
    func send(_ frame: PeerFrame, toAddress address: MemberAddress)
    /// Seals and sends one gossip datagram.
    func sendDatagram(_ payload: [UInt8], to: MemberAddress)
    /// Resets every link to `node` (TCP RST).
    func resetLinks(to node: NodeID, reason: String)
}
