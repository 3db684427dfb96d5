import NIOCore
import SkeinCrypto
import SkeinMembership
import SkeinWire

/// The life of one relay-to-relay link, from its socket's first byte to its last
/// (Docs/peer-protocol.md §1, §5.3, §5.4): the handshake, keepalive, the idle and silence rules,
/// and closing with or without GOODBYE. Pure: no I/O, and time (`now`) and randomness (the
/// handshake's ephemeral secret) are inputs.
///
/// The shell (`PeerLink`) moves bytes: it opens and seals records with the session this machine
/// hands it when the handshake is done, and carries out the machine's `PeerLinkAction`s. Every
/// input appends what to do to `actions`, as every core of the relay does.
public struct PeerLinkMachine: Sendable {
    public enum Role: Sendable, Equatable { case initiator, responder }

    /// The link's rules in time (Docs/relay-settings.md).
    public struct Timers: Sendable {
        public var keepaliveInterval: TimeAmount
        public var idleTimeout: TimeAmount
        public var idleClose: TimeAmount
        /// How long a link that said goodbye reads what the peer still sends.
        public var linger: TimeAmount
        /// The linger of every link (Docs/peer-protocol.md §5.4).
        public static let linger: TimeAmount = .seconds(2)

        public init(keepaliveInterval: TimeAmount, idleTimeout: TimeAmount, idleClose: TimeAmount, linger: TimeAmount = Self.linger) {
            self.keepaliveInterval = keepaliveInterval
            self.idleTimeout = idleTimeout
            self.idleClose = idleClose
            self.linger = linger
        }
    }

    /// What the handshake needs: who this relay is, its keys, and the settings.
    public struct HandshakeContext: Sendable {
        public var network: String
        public var nodeID: [UInt8]
        public var keyring: Keyring
        public var settings: HandshakeSettings

        public init(network: String, nodeID: [UInt8], keyring: Keyring, settings: HandshakeSettings) {
            self.network = network
            self.nodeID = nodeID
            self.keyring = keyring
            self.settings = settings
        }
    }

    public enum State: Sendable {
        /// Before the socket is connected (a dial) or before it is handed to the link (accepted).
        case connecting
        /// The handshake is under way; it fails at its own deadline.
        case handshaking(Handshake)
        /// Sealed records both ways.
        case established(Established)
        /// This side said GOODBYE and sends nothing more; it reads and delivers what the peer sent
        /// before it saw the goodbye, until the peer closes or `until`.
        case closing(peer: LinkPeer, until: NIODeadline)
        /// Over; nothing more is read or sent.
        case closed(PeerLinkClosure)
    }

    public enum Handshake: Sendable {
        case initiator(HandshakeInitiator)
        case responder(HandshakeResponder)
    }

    /// Who is at the other end, once the handshake proved it. Plain values only, so the
    /// per-read and per-write notes of `established` copy no reference.
    public struct LinkPeer: Sendable, Equatable {
        public var node: NodeID
        public var keyID: KeyID
        public var cipher: PeerCipher

        /// The node id as the handshake carried it (16 bytes).
        public var nodeID: [UInt8] { node.bytes }
    }

    public struct Established: Sendable {
        public var peer: LinkPeer
        var lastReceived: NIODeadline
        var lastSent: NIODeadline
        /// The last time `usefulFrames` was seen to have moved.
        var lastUseful: NIODeadline
        var usefulFrames: UInt64
        var pingToken: UInt64
    }

    public let role: Role
    public private(set) var state: State = .connecting
    let timers: Timers
    /// This relay's HELLO: the address it listens on and its name.
    let hello: (address: String, name: String)

    public init(role: Role, hello: (address: String, name: String), timers: Timers) {
        self.role = role
        self.hello = hello
        self.timers = timers
    }

    // MARK: - Questions

    /// Frames sent now are queued (and sealed once established); false once closing.
    public var acceptsFrames: Bool {
        switch state {
        case .connecting, .handshaking, .established: true
        case .closing, .closed: false
        }
    }

    public var isEstablished: Bool {
        if case .established = state { return true }
        return false
    }

    public var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// Ended (closed, or closing after a goodbye): the link no longer carries new traffic.
    public var hasEnded: Bool { !acceptsFrames }

    /// The peer, once the handshake proved who it is.
    public var peer: LinkPeer? {
        switch state {
        case .established(let e): e.peer
        case .closing(let peer, _): peer
        case .connecting, .handshaking: nil
        case .closed(let closure): closure.peer
        }
    }

    /// How the link ended, once it has.
    public var closure: PeerLinkClosure? {
        if case .closed(let closure) = state { return closure }
        return nil
    }

    /// What a read's bytes are: handshake messages, records, or nothing to look at.
    public enum Reading: Sendable, Equatable { case handshake, records, ignore }

    // MARK: - Inputs

    /// The socket is connected. An initiator writes msg1; both sides arm the handshake deadline.
    public mutating func connected(now: NIODeadline, ephemeralSecret: [UInt8], context: HandshakeContext, actions: inout [PeerLinkAction]) {
        if case .closed = state {
            actions.append(.close)  // ended while it was being dialed: the socket goes too
            return
        }
        guard case .connecting = state else { return }
        switch role {
        case .initiator:
            var initiator = HandshakeInitiator(
                network: context.network, nodeID: context.nodeID, keyring: context.keyring,
                ephemeralSecret: ephemeralSecret, settings: context.settings, now: now)
            let first = initiator.start()
            state = .handshaking(.initiator(initiator))
            actions.append(.write(first))
        case .responder:
            state = .handshaking(.responder(HandshakeResponder(
                network: context.network, nodeID: context.nodeID, keyring: context.keyring,
                ephemeralSecret: ephemeralSecret, settings: context.settings, now: now)))
        }
        actions.append(.armTimer(now + context.settings.timeout))
    }

    /// Bytes arrived at `now`: notes the time and says what they are.
    public mutating func read(at now: NIODeadline) -> Reading {
        switch state {
        case .connecting, .closed: return .ignore
        case .handshaking: return .handshake
        case .closing: return .records
        case .established(var e):
            e.lastReceived = now
            state = .established(e)
            return .records
        }
    }

    /// Records were written at `now`.
    public mutating func wrote(at now: NIODeadline) {
        guard case .established(var e) = state else { return }
        e.lastSent = now
        state = .established(e)
    }

    /// Handshake bytes from the peer.
    public mutating func handshake(_ bytes: [UInt8], now: NIODeadline, replayCache: inout HandshakeReplayCache, actions: inout [PeerLinkAction]) {
        guard case .handshaking(let handshake) = state else { return }
        let step: HandshakeStep
        switch handshake {
        case .initiator(var initiator):
            step = initiator.receive(bytes)
            state = .handshaking(.initiator(initiator))
        case .responder(var responder):
            step = responder.receive(bytes, replayCache: &replayCache)
            state = .handshaking(.responder(responder))
        }
        take(step, now: now, actions: &actions)
    }

    /// The timer armed by `.armTimer` fired. `usefulFrames` counts every frame other than HELLO,
    /// PING and PONG the link has carried either way; it moving is what keeps a link open.
    public mutating func timerFired(now: NIODeadline, usefulFrames: UInt64, actions: inout [PeerLinkAction]) {
        switch state {
        case .connecting, .closed:
            return
        case .handshaking(let handshake):
            let step: HandshakeStep?
            switch handshake {
            case .initiator(var initiator):
                step = initiator.expire(now: now)
                state = .handshaking(.initiator(initiator))
            case .responder(var responder):
                step = responder.expire(now: now)
                state = .handshaking(.responder(responder))
            }
            if let step { take(step, now: now, actions: &actions) }
        case .closing(let peer, let until):
            guard now >= until else {
                actions.append(.armTimer(until))
                return
            }
            // The peer never closed its side: stop reading.
            state = .closed(PeerLinkClosure(reason: "", how: .goodbye, peer: peer))
            actions.append(.close)
        case .established(var e):
            if now - e.lastReceived >= timers.idleTimeout {
                close(reason: "no traffic for \(timers.idleTimeout.nanoseconds / 1_000_000) ms", goodbye: true, now: now, actions: &actions)
                actions.append(.silent(for: now - e.lastReceived))
                return
            }
            if usefulFrames != e.usefulFrames {
                e.usefulFrames = usefulFrames
                e.lastUseful = now
            }
            if now - e.lastUseful >= timers.idleClose {
                state = .established(e)
                close(reason: "idle", goodbye: true, now: now, actions: &actions)
                return
            }
            if now - e.lastSent >= timers.keepaliveInterval || now - e.lastReceived >= timers.keepaliveInterval {
                e.pingToken &+= 1
                actions.append(.send(.ping(token: e.pingToken)))
            }
            state = .established(e)
            actions.append(.armTimer(now + timers.keepaliveInterval))
        }
    }

    /// A control frame the link answers itself (`PeerFrame.isLinkControl`).
    public mutating func control(_ frame: PeerFrame, now: NIODeadline, actions: inout [PeerLinkAction]) {
        switch frame {
        case .hello(let address, let name):
            if case .established = state { actions.append(.helloReceived(address: address, name: name)) }
        case .ping(let token):
            if case .established = state { actions.append(.send(.pong(token: token))) }
        case .goodbye(let reason):
            // Everything the peer sent came before its goodbye; answer in kind.
            close(reason: "the peer said goodbye: \(reason)", goodbye: true, now: now, actions: &actions)
        default:
            break
        }
    }

    /// Ends the link. With `goodbye`, an established link tells the peer why, shuts its sending
    /// side and keeps reading for `timers.linger`; otherwise (or before establishment) the
    /// socket closes at once.
    public mutating func close(reason: String, goodbye: Bool, now: NIODeadline, actions: inout [PeerLinkAction]) {
        switch state {
        case .established(let e) where goodbye:
            state = .closing(peer: e.peer, until: now + timers.linger)
            actions.append(.send(.goodbye(reason: reason)))
            actions.append(.closeOutput)
            actions.append(.armTimer(now + timers.linger))
            actions.append(.ended(PeerLinkClosure(reason: reason, how: .goodbye, peer: e.peer)))
        case .connecting, .handshaking, .established:
            end(PeerLinkClosure(reason: reason, how: wasEstablished ? .broken : .failed(refused: false), peer: peer), then: .close, actions: &actions)
        case .closing, .closed:
            return
        }
    }

    /// The keyring changed: an established link whose key is no longer in it closes with a
    /// GOODBYE (and reconnects with a current key).
    public mutating func keysChanged(_ keyring: Keyring, now: NIODeadline, actions: inout [PeerLinkAction]) {
        guard case .established(let e) = state, keyring.key(for: e.peer.keyID) == nil else { return }
        close(reason: "key \(e.peer.keyID) was retired", goodbye: true, now: now, actions: &actions)
    }

    /// Ends the link at once with a TCP reset: what is unsent is dropped.
    public mutating func reset(reason: String, actions: inout [PeerLinkAction]) {
        abort(reason, refused: false, socket: .reset, actions: &actions)
    }

    /// The dial failed, the socket failed, or a record did not open: the link is broken.
    public mutating func failed(_ reason: String, refused: Bool = false, actions: inout [PeerLinkAction]) {
        abort(reason, refused: refused, socket: .close, actions: &actions)
    }

    /// Ends the link without a GOODBYE, the socket as `socket` says. A link already closing
    /// after its GOODBYE just stops reading: it was reported then.
    private mutating func abort(_ reason: String, refused: Bool, socket: PeerLinkAction, actions: inout [PeerLinkAction]) {
        switch state {
        case .connecting, .handshaking, .established:
            end(PeerLinkClosure(reason: reason, how: wasEstablished ? .broken : .failed(refused: refused), peer: peer), then: socket, actions: &actions)
        case .closing(let peer, _):
            state = .closed(PeerLinkClosure(reason: reason, how: .goodbye, peer: peer))
            actions.append(socket)
        case .closed:
            return
        }
    }

    /// The socket closed. `truncated` says why the stream ended inside a record, if it did.
    public mutating func socketClosed(truncated: String? = nil, actions: inout [PeerLinkAction]) {
        switch state {
        case .connecting, .handshaking:
            end(PeerLinkClosure(reason: "connection closed during the handshake", how: .failed(refused: false), peer: nil), then: nil, actions: &actions)
        case .established(let e):
            let reason = truncated.map { "the peer's stream ended inside a record: \($0)" } ?? "connection closed by the peer"
            end(PeerLinkClosure(reason: reason, how: .broken, peer: e.peer), then: nil, actions: &actions)
        case .closing(let peer, _):
            // The peer closed too: a clean end, already reported.
            state = .closed(PeerLinkClosure(reason: "", how: .goodbye, peer: peer))
        case .closed:
            return
        }
    }

    // MARK: - Steps

    private var wasEstablished: Bool { isEstablished }

    private mutating func end(_ closure: PeerLinkClosure, then socket: PeerLinkAction?, actions: inout [PeerLinkAction]) {
        state = .closed(closure)
        if let socket { actions.append(socket) }
        actions.append(.ended(closure))
    }

    private mutating func take(_ step: HandshakeStep, now: NIODeadline, actions: inout [PeerLinkAction]) {
        switch step {
        case .needMoreBytes:
            break
        case .send(let bytes):
            actions.append(.write(bytes))
        case .established(let session, let send, let leftover):
            actions.append(.write(send))
            let peer = LinkPeer(node: NodeID(bytes: session.peerNodeID), keyID: session.keyID, cipher: session.cipher)
            state = .established(Established(
                peer: peer, lastReceived: now, lastSent: now, lastUseful: now, usefulFrames: 0, pingToken: 0))
            actions.append(.established(session, leftover: leftover))
            // HELLO is the first frame, ahead of any queued while the handshake ran.
            actions.append(.sendFirst(.hello(address: hello.address, name: hello.name)))
            actions.append(.armTimer(now + timers.keepaliveInterval))
        case .rejected(let rejection, let send):
            actions.append(.write(send))
            end(PeerLinkClosure(reason: "handshake rejected: \(rejection)", how: .rejected(rejection), peer: nil), then: .close, actions: &actions)
        }
    }
}

/// What a peer link's shell does for its machine.
public enum PeerLinkAction: Sendable {
    /// Writes handshake bytes (not sealed).
    case write([UInt8])
    /// The handshake is done: seal and open records with `session`; `leftover` bytes after the
    /// handshake are the first records.
    case established(PeerSession, leftover: [UInt8])
    /// Queues a frame ahead of every frame already queued.
    case sendFirst(PeerFrame)
    /// Queues a frame.
    case send(PeerFrame)
    /// Writes what is queued, then shuts the socket's sending side.
    case closeOutput
    /// Closes the socket.
    case close
    /// Closes the socket with a TCP reset, dropping what it holds unsent.
    case reset
    /// Calls `timerFired` at this deadline (replacing any earlier one).
    case armTimer(NIODeadline)
    /// The peer's HELLO: the address it listens on and its name.
    case helloReceived(address: String, name: String)
    /// The link received nothing for this long (reported beside its closing).
    case silent(for: TimeAmount)
    /// The link ended; reported once.
    case ended(PeerLinkClosure)
}

/// How and why a peer link ended.
public struct PeerLinkClosure: Sendable, Equatable {
    public enum How: Sendable, Equatable {
        /// A GOODBYE, either way (idle, duplicate, key retired, leaving): not a failure, and
        /// nothing in flight was lost.
        case goodbye
        /// An established link ended without GOODBYE: frames in flight may be lost.
        case broken
        /// The handshake was refused, by either side.
        case rejected(HandshakeRejection)
        /// The link ended before it was established; `refused`: the dial met ECONNREFUSED
        /// (nothing listens there: the relay's process is gone).
        case failed(refused: Bool)
    }

    public var reason: String
    public var how: How
    /// Who was at the other end, if the handshake got that far.
    public var peer: PeerLinkMachine.LinkPeer?

    public var wasEstablished: Bool {
        switch how {
        case .goodbye, .broken: true
        case .rejected, .failed: false
        }
    }
}

extension PeerFrame {
    /// HELLO, PING, PONG and GOODBYE: frames the link answers itself, never passed on.
    @inlinable
    public var isLinkControl: Bool {
        switch kind {
        case .hello, .ping, .pong, .goodbye: true
        default: false
        }
    }
}
