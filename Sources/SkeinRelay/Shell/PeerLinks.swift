import Logging
import Metrics
import NIOCore
import NIOPosix
import SkeinCrypto
import SkeinMembership
import SkeinWire

/// Settings of the relay-to-relay links (Docs/peer-protocol.md, Docs/relay-settings.md).
public struct PeerLinkSettings: Sendable {
    public var handshake = HandshakeSettings(protocolVersion: PeerProtocol.version)
    /// A link that has sent or received nothing for this long sends a ping. Membership, not
    /// the links, detects failed relays, so this is slow: a ping costs about 100 bytes each way
    /// (IP, TCP, record and frame), and at rest it is most of a relay's TCP traffic.
    public var keepaliveInterval: TimeAmount = .seconds(5)
    /// A link that has received nothing for this long is closed, with a GOODBYE in case the peer
    /// still reads (a paused or partitioned peer; a crashed one is usually seen at once as a
    /// closed socket). Membership, not the link, decides whether that relay is gone.
    public var idleTimeout: TimeAmount = .seconds(15)
    /// A link that has carried no frame but keepalives (no request, reply, event, tunnel data
    /// or membership message) for this long closes gracefully; the next frame redials. Idle
    /// links would otherwise cost keepalives for nothing (Docs/peer-protocol.md §5).
    public var idleClose: TimeAmount = .seconds(10)
    /// Dialing gives up after this long.
    public var connectTimeout: TimeAmount = .seconds(3)
    /// Field limits of frames on the links.
    public var limits = WireLimits()

    public init() {}
}

/// Who this relay is on the links.
public struct PeerIdentity: Sendable {
    public var network: String
    public var nodeID: [UInt8]
    public var name: String
    /// The `host:port` the relay listens on for links (and gossip), told to peers in HELLO.
    public var address: String

    public init(network: String, nodeID: [UInt8], name: String, address: String) {
        self.network = network
        self.nodeID = nodeID
        self.name = name
        self.address = address
    }
}

/// The SwiftNIO shell of the peer links: listens, dials, seals and opens records, and packs frames
/// with `PeerOutbox`/`PeerInbox`. Each link's life is decided by its `PeerLinkMachine`, and which
/// link carries a peer's traffic by a `PeerLinkIndex`; this class carries out what they decide.
/// All state lives on `eventLoop`.
public final class PeerLinks: @unchecked Sendable {
    // @unchecked: all mutable state is confined to `eventLoop`.
    public let eventLoop: any EventLoop
    public private(set) var identity: PeerIdentity
    public let settings: PeerLinkSettings
    let logger: Logger
    @exclusivity(unchecked) private(set) var keyring: Keyring
    @exclusivity(unchecked) private var replayCache = HandshakeReplayCache()
    @exclusivity(unchecked) private var listener: (any Channel)?
    @exclusivity(unchecked) private var nextLinkID: UInt64 = 0
    /// Every link not yet closed, in whatever state.
    @exclusivity(unchecked) private var links: [UInt64: PeerLink] = [:]
    /// The established link of each peer, and dials under way.
    @exclusivity(unchecked) private var index = PeerLinkIndex<PeerLink>() {
        didSet { lastLookup = nil }
    }
    /// The last answer of `link(toNode:)`: a flood of frames goes to one relay at a time.
    @exclusivity(unchecked) private var lastLookup: (node: NodeID, link: PeerLink)?
    @exclusivity(unchecked) private var closing = false
    let metrics = PeerMetrics()

    /// Called on the event loop for every frame a peer sends (HELLO, PING, PONG and GOODBYE are
    /// handled by the link and not passed on).
    @exclusivity(unchecked) public var onFrame: ((PeerFrame, PeerLink) -> Void)?
    /// A link finished its handshake and its HELLO: it is addressable.
    @exclusivity(unchecked) public var onLinkUp: ((PeerLink) -> Void)?
    /// A link ended; `link.closure` says how and why.
    @exclusivity(unchecked) public var onLinkDown: ((PeerLink) -> Void)?
    /// A link's socket can take more bytes again after `isWritable` was false (backpressure).
    @exclusivity(unchecked) public var onWritable: ((PeerLink) -> Void)?
    /// A link's socket crossed its high-water mark: `isWritable` is false until `onWritable`.
    @exclusivity(unchecked) public var onUnwritable: ((PeerLink) -> Void)?
    /// Every frame of one socket read has been passed to `onFrame`: a consumer that gathers
    /// output per frame flushes it here, once per read rather than once per frame.
    @exclusivity(unchecked) public var onReadComplete: ((PeerLink) -> Void)?

    public init(identity: PeerIdentity, keyring: Keyring, settings: PeerLinkSettings, eventLoop: any EventLoop, logger: Logger) {
        self.identity = identity
        self.keyring = keyring
        self.settings = settings
        self.eventLoop = eventLoop
        self.logger = logger
    }

    var timers: PeerLinkMachine.Timers {
        PeerLinkMachine.Timers(
            keepaliveInterval: settings.keepaliveInterval, idleTimeout: settings.idleTimeout, idleClose: settings.idleClose)
    }

    // MARK: - Listening and dialing

    /// Unsent bytes at which a link counts as full (publishers to that relay pause) and at which
    /// it counts as drained again: the most a relay buffers for a slower one, per link.
    static let waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 2 << 20, high: 8 << 20)

    /// Listens for peer links on `host:port`; returns the bound port.
    public func listen(host: String, port: Int) async throws -> Int {
        let channel = try await ServerBootstrap(group: eventLoop)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 65_536, maximum: 1 << 20))
            .childChannelOption(.writeBufferWaterMark, value: Self.waterMark)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { _ = try self.accepted(channel) }
            }
            .bind(host: host, port: port).get()
        try await eventLoop.submit { self.listener = channel }.get()
        let bound = channel.localAddress?.port ?? port
        logger.info("listening for peer links", metadata: ["address": "\(host):\(bound)"])
        return bound
    }

    /// Sets the address told to peers in HELLO (e.g. once a port 0 listener knows its port).
    /// Call before any link is made.
    public func advertise(_ address: String) {
        eventLoop.preconditionInEventLoop()
        identity.address = address
    }

    /// Stops accepting links (established ones stay).
    public func stopListening() async {
        let listener = try? await eventLoop.submit { () -> (any Channel)? in
            defer { self.listener = nil }
            return self.listener
        }.get()
        if let listener = listener ?? nil { try? await listener.close() }
    }

    /// The established link to the relay listening on `address`, or one being opened to it.
    /// Frames sent on a link that is still handshaking wait in its outbox.
    public func link(to address: String) -> PeerLink {
        eventLoop.preconditionInEventLoop()
        return index.link(toAddress: address) ?? dial(address)
    }

    /// The established link to a peer, if any.
    public func link(toNode node: NodeID) -> PeerLink? {
        if let lastLookup, lastLookup.node == node { return lastLookup.link }
        guard let link = index.link(toNode: node) else { return nil }
        lastLookup = (node, link)
        return link
    }

    public var establishedLinks: [PeerLink] { index.links }

    /// The ids of the keys links are accepted with, for `/status`.
    var keyringIDs: [String] { keyring.keyIDs.map(\.description) }

    /// The established links as `/status` lists them, oldest first.
    var rows: [LinkRow] {
        establishedLinks.sorted { $0.id < $1.id }.map(\.row)
    }

    /// Ends every link to `node` at once with a TCP reset, dropping what they hold unsent: the
    /// relay was unreachable long enough to be held dead, and a connection that carried traffic
    /// through the outage sits in TCP's retransmission backoff (seconds after the path is back,
    /// then delivering stale frames behind fresh ones). The reset reaches the peer at once, so
    /// its side ends too, and the next frame dials a fresh link. Returns how many were reset.
    @discardableResult
    public func reset(node: NodeID, reason: String) -> Int {
        let stale = links.values.filter { $0.peerNode == node && !$0.isClosed }
        for link in stale { link.reset(reason: reason) }
        return stale.count
    }

    private func dial(_ address: String) -> PeerLink {
        let placeholder = makeLink(channel: nil, role: .initiator, dialedAddress: address)
        guard !placeholder.isClosed else { return placeholder }  // shutting down
        guard let (host, port) = splitHostPort(address) else {
            placeholder.fail("cannot dial \(address): not host:port")
            return placeholder
        }
        index.dialed(placeholder.id, placeholder, address: address)
        ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 65_536, maximum: 1 << 20))
            .channelOption(.writeBufferWaterMark, value: Self.waterMark)
            .connectTimeout(settings.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try self.connect(placeholder, over: channel) }
            }
            .connect(host: host, port: port)
            .whenFailure { error in
                placeholder.fail("cannot connect to \(address): \(error)", refused: isConnectionRefused(error))
            }
        return placeholder
    }

    /// A link on a connection a peer made (the listener's, or a test's channel).
    func accepted(_ channel: any Channel) throws -> PeerLink {
        let link = makeLink(channel: channel, role: .responder, dialedAddress: nil)
        try channel.pipeline.syncOperations.addHandler(PeerLinkHandler(link: link))
        return link
    }

    /// A dial to `address` over `channel` (a test's, not yet connected): what `link(to:)` does
    /// once its socket exists.
    func dial(_ address: String, over channel: any Channel) throws -> PeerLink {
        let link = makeLink(channel: nil, role: .initiator, dialedAddress: address)
        guard !link.isClosed else { return link }  // shutting down
        index.dialed(link.id, link, address: address)
        try connect(link, over: channel)
        return link
    }

    private func connect(_ link: PeerLink, over channel: any Channel) throws {
        link.attach(channel)
        try channel.pipeline.syncOperations.addHandler(PeerLinkHandler(link: link))
    }

    private func makeLink(channel: (any Channel)?, role: PeerLinkMachine.Role, dialedAddress: String?) -> PeerLink {
        eventLoop.preconditionInEventLoop()
        nextLinkID += 1
        let link = PeerLink(id: nextLinkID, owner: self, channel: channel, role: role, dialedAddress: dialedAddress)
        links[link.id] = link
        // A link that starts while the relay shuts down ends before its handshake (no HELLO
        // would announce a relay that is leaving).
        if closing { link.fail("relay shutting down") }
        return link
    }

    // MARK: - Keys

    /// Takes a new keyring (SIGHUP): new handshakes use it at once, and links authenticated
    /// with a key that is no longer in it are closed (they reconnect with a current key).
    public func update(keyring: Keyring) {
        eventLoop.preconditionInEventLoop()
        self.keyring = keyring
        for link in links.values { link.keysChanged(keyring) }
    }

    // MARK: - Shutdown

    /// Says goodbye on every link and stops listening.
    public func closeAll(reason: String) async {
        let listener = try? await eventLoop.submit { () -> (any Channel)? in
            self.closing = true
            for link in self.links.values { link.close(reason: reason, goodbye: true) }
            defer { self.listener = nil }
            return self.listener
        }.get()
        if let listener = listener ?? nil { try? await listener.close() }
    }

    // MARK: - From links (on the event loop)

    var handshakeContext: PeerLinkMachine.HandshakeContext {
        PeerLinkMachine.HandshakeContext(network: identity.network, nodeID: identity.nodeID, keyring: keyring, settings: settings.handshake)
    }

    func withReplayCache<T>(_ body: (inout HandshakeReplayCache) -> T) -> T {
        body(&replayCache)
    }

    func established(_ link: PeerLink) {
        index.established(link.id)
        metrics.handshakesSucceeded.increment()
        logger.info("peer link established", metadata: link.logMetadata)
    }

    func helloReceived(_ link: PeerLink, address: String, name: String) {
        guard let peer = link.peer else { return }
        var decisions: [PeerLinkIndex<PeerLink>.Decision] = []
        let initiator = link.isInitiator ? identity.nodeID : peer.nodeID
        let carries = index.hello(link.id, link, node: peer.node, initiator: initiator, address: address, decisions: &decisions)
        var closes: [(link: PeerLink, reason: String, goodbye: Bool)] = []
        for decision in decisions {
            switch decision {
            case .adopt(let from, let into): from.adoptQueuedFrames(into: into)
            case .close(let other, let reason, let goodbye): closes.append((other, reason, goodbye))
            }
        }
        if carries {
            link.advertisedAddress = address
            link.peerName = name
            metrics.linksUp.record(index.count)
            onLinkUp?(link)
        }
        // The links it replaces end after it is announced, so whoever follows the links sees
        // the peer reachable throughout.
        for other in closes { other.link.close(reason: other.reason, goodbye: other.goodbye) }
    }

    func closed(_ link: PeerLink) {
        links[link.id] = nil
        index.closed(link.id, node: link.peerNode, address: link.advertisedAddress, dialed: link.dialedAddress)
        metrics.linksUp.record(index.count)
        guard let closure = link.closure else { return }
        switch closure.how {
        case .goodbye, .broken:
            logger.info("peer link closed", metadata: link.logMetadata.merging(["reason": "\(closure.reason)"]) { $1 })
        case .rejected(let rejection):
            metrics.handshakeRejections(rejection).increment()
            logger.warning("peer handshake rejected", metadata: link.logMetadata.merging(["reason": "\(rejection)"]) { $1 })
        case .failed:
            logger.debug("peer link failed before establishment", metadata: link.logMetadata.merging(["reason": "\(closure.reason)"]) { $1 })
        }
        onLinkDown?(link)
    }
}

/// One relay-to-relay link: a TCP connection, its handshake, then sealed records. Its
/// `PeerLinkMachine` decides; this class moves bytes and time.
public final class PeerLink: @unchecked Sendable, CustomStringConvertible {
    // @unchecked: confined to the owner's event loop.
    public let id: UInt64
    public let isInitiator: Bool
    /// The address this side dialed (initiators only).
    public let dialedAddress: String?
    /// The address the peer listens on, from its HELLO.
    public internal(set) var advertisedAddress: String?
    public internal(set) var peerName: String?
    /// The peer's node id, from the handshake: frames are routed by it.
    @exclusivity(unchecked) public private(set) var peerNode: NodeID?
    /// How the link ended, once it has.
    @exclusivity(unchecked) public private(set) var closure: PeerLinkClosure?

    unowned let owner: PeerLinks
    @exclusivity(unchecked) private var machine: PeerLinkMachine
    @exclusivity(unchecked) private(set) var channel: (any Channel)?
    /// The record keys, from the handshake on.
    @exclusivity(unchecked) private var session: PeerSession?
    @exclusivity(unchecked) private var outbox: PeerOutbox
    @exclusivity(unchecked) private var inbox: PeerInbox
    @exclusivity(unchecked) private var inbound = ByteBuffer()
    @exclusivity(unchecked) private var plaintexts = ByteBuffer()
    /// `inbound` is a buffer of this link's own holding a partial record, not NIO's read buffer.
    @exclusivity(unchecked) private var inboundIsOwn = false
    @exclusivity(unchecked) private var flushScheduled = false
    /// Frames other than HELLO, PING, PONG and GOODBYE, either way: the machine's idle rule.
    @exclusivity(unchecked) private var usefulFrames: UInt64 = 0
    @exclusivity(unchecked) private var timer: Scheduled<Void>?

    init(id: UInt64, owner: PeerLinks, channel: (any Channel)?, role: PeerLinkMachine.Role, dialedAddress: String?) {
        self.id = id
        self.owner = owner
        self.channel = channel
        self.isInitiator = role == .initiator
        self.dialedAddress = dialedAddress
        self.machine = PeerLinkMachine(role: role, hello: (owner.identity.address, owner.identity.name), timers: owner.timers)
        self.outbox = PeerOutbox(maxRecordPlaintext: owner.settings.handshake.records.maxPlaintext)
        self.inbox = PeerInbox(limits: owner.settings.limits)
    }

    public var isEstablished: Bool { machine.isEstablished }
    /// Ended or ending: the link takes no new frames.
    public var isClosed: Bool { machine.hasEnded }
    public var peer: PeerLinkMachine.LinkPeer? { machine.peer }
    public var peerNodeID: [UInt8]? { machine.peer?.nodeID }
    public var keyID: KeyID? { machine.peer?.keyID }
    public var cipher: PeerCipher? { machine.peer?.cipher }
    public var closeReason: String? { closure?.reason }
    /// The link ended with a goodbye, either way (idle, duplicate, leaving, key retired): not a
    /// failure, and nothing in flight was lost.
    public var closedGracefully: Bool { closure?.how == .goodbye }
    /// The dial failed with ECONNREFUSED: nothing listens at the address (the relay's process
    /// is gone; a stopped one's kernel would still accept).
    public var connectionRefused: Bool { closure?.how == .failed(refused: true) }

    public var description: String {
        "link \(id) \(isInitiator ? "to" : "from") \(advertisedAddress ?? dialedAddress ?? remoteAddress)"
    }

    var remoteAddress: String {
        channel?.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?"
    }

    var logMetadata: Logger.Metadata {
        var m: Logger.Metadata = ["link": "\(id)", "remote": "\(remoteAddress)", "role": "\(isInitiator ? "initiator" : "responder")"]
        if let peerNodeID { m["peer"] = "\(hex(peerNodeID))" }
        if let peerName { m["peer-name"] = "\(peerName)" }
        if let keyID { m["key-id"] = "\(keyID)" }
        return m
    }

    var row: LinkRow {
        LinkRow(
            peer: peerName ?? "", address: advertisedAddress ?? dialedAddress ?? "", node: peerNode, outbound: isInitiator,
            keyID: keyID?.description ?? "", cipher: cipher?.description ?? "")
    }

    /// Queues a frame; it is sealed and written at the end of this event-loop tick together
    /// with every other frame queued in it (one record, one write, when traffic is light).
    /// Frames sent to a link that has ended are dropped.
    public func send(_ frame: PeerFrame) {
        owner.eventLoop.assertInEventLoop()
        guard machine.acceptsFrames else { return }
        enqueue(frame)
    }

    private func enqueue(_ frame: PeerFrame) {
        if !frame.isLinkControl { usefulFrames &+= 1 }
        outbox.enqueue(frame)
        scheduleFlush()
    }

    /// False while the socket's unsent bytes are above its high-water mark: senders that can
    /// wait should, until `PeerLinks.onWritable` (frames sent meanwhile are queued, not lost).
    public var isWritable: Bool { channel?.isWritable ?? false }

    func writabilityChanged() {
        if channel?.isWritable == true {
            owner.onWritable?(self)
        } else {
            owner.onUnwritable?(self)
        }
    }

    /// Bytes of frames waiting to be sealed, per class.
    public func queuedBytes(_ trafficClass: PeerTrafficClass) -> Int { outbox.queuedBytes(trafficClass) }

    /// Ends the link. With `goodbye`, an established link first tells the peer why and then
    /// closes gracefully: it stops sending at once, but keeps reading (and delivering) what the
    /// peer had already sent until the peer closes too, for at most the machine's linger. So frames in
    /// flight on a link that closes (a duplicate, a retired key, a shutdown) are not lost.
    public func close(reason: String, goodbye: Bool) {
        var actions: [PeerLinkAction] = []
        machine.close(reason: reason, goodbye: goodbye, now: .now(), actions: &actions)
        perform(actions)
    }

    /// Closes at once with a TCP reset (SO_LINGER 0): unsent bytes are dropped, not retried.
    func reset(reason: String) {
        var actions: [PeerLinkAction] = []
        machine.reset(reason: reason, actions: &actions)
        perform(actions)
    }

    /// The keyring changed (SIGHUP): a link authenticated with a key no longer in it closes.
    func keysChanged(_ keyring: Keyring) {
        var actions: [PeerLinkAction] = []
        machine.keysChanged(keyring, now: .now(), actions: &actions)
        perform(actions)
    }

    // MARK: - Driven by the handler and owner

    func attach(_ channel: any Channel) {
        self.channel = channel
    }

    func fail(_ reason: String, refused: Bool = false) {
        var actions: [PeerLinkAction] = []
        machine.failed(reason, refused: refused, actions: &actions)
        perform(actions)
    }

    /// Moves every queued frame to `other` (which seals them with its own session).
    func adoptQueuedFrames(into other: PeerLink) {
        for frame in takeQueuedFrames() { other.send(frame) }
    }

    /// Queues `frame` ahead of everything already queued (HELLO must be the first frame).
    private func enqueueFirst(_ frame: PeerFrame) {
        let queued = takeQueuedFrames()
        enqueue(frame)
        for frame in queued { enqueue(frame) }
    }

    private func takeQueuedFrames() -> [PeerFrame] {
        guard !outbox.isEmpty else { return [] }
        var record = ByteBuffer()
        var frames: [PeerFrame] = []
        var unpack = PeerInbox(limits: owner.settings.limits, maxFrameSize: .max)
        while outbox.nextRecord(into: &record) {
            try? unpack.receive(record: record, into: &frames)
            record.clear()
        }
        // Classes were reordered by packing; order within each class is what matters.
        return frames
    }

    func channelActive() {
        var actions: [PeerLinkAction] = []
        machine.connected(now: .now(), ephemeralSecret: SecureRandom.bytes(32), context: owner.handshakeContext, actions: &actions)
        perform(actions)
    }

    func received(_ buffer: ByteBuffer) {
        switch machine.read(at: .now()) {
        case .ignore:
            return
        case .handshake:
            var actions: [PeerLinkAction] = []
            let bytes = Array(buffer.readableBytesView)
            owner.withReplayCache { machine.handshake(bytes, now: .now(), replayCache: &$0, actions: &actions) }
            perform(actions)
        case .records:
            receivedRecords(buffer)
        }
    }

    private func receivedRecords(_ buffer: ByteBuffer) {
        if inbound.readableBytes == 0 {
            // The common case: take the read buffer as is and open records in place.
            inbound = buffer
            inboundIsOwn = false
            openRecords()
        } else {
            // A record started in an earlier read: copy only what completes it (`inbound` was
            // sized for the whole record when it was kept), then open the rest of this read
            // where it lies.
            var buffer = buffer
            let size = (try? session?.opener.nextRecordSize(in: inbound)) ?? nil
            let missing = size.map { $0 - inbound.readableBytes } ?? 4
            var head = buffer.readSlice(length: min(max(missing, 0), buffer.readableBytes))!
            inbound.writeBuffer(&head)
            if buffer.readableBytes > 0 && (size == nil || inbound.readableBytes >= size!) {
                // The pending record (or its header) is complete: open it, then the rest.
                if size == nil {
                    inbound.writeBuffer(&buffer)
                    openRecords()
                } else {
                    openRecords(then: buffer)
                }
            } else {
                openRecords()
            }
        }
    }

    func channelInactive() {
        var truncated: String?
        if let session, inbound.readableBytes > 0 {
            do {
                try session.opener.finish(remaining: inbound)
            } catch {
                truncated = "\(error)"
            }
        }
        var actions: [PeerLinkAction] = []
        machine.socketClosed(truncated: truncated, actions: &actions)
        perform(actions)
    }

    // MARK: - Carrying out the machine's decisions

    private func perform(_ actions: [PeerLinkAction]) {
        var established = false
        var leftover: [UInt8] = []
        for action in actions {
            switch action {
            case .write(let bytes):
                write(bytes)
            case .established(let session, let rest):
                self.session = session
                peerNode = NodeID(bytes: session.peerNodeID)
                established = true
                leftover = rest
            case .sendFirst(let frame):
                enqueueFirst(frame)
            case .send(let frame):
                enqueue(frame)
            case .closeOutput:
                flush()
                channel?.close(mode: .output, promise: nil)
            case .close:
                channel?.close(promise: nil)
            case .reset:
                guard let channel else { break }
                guard let socket = channel as? any SocketOptionProvider else {
                    channel.close(promise: nil)
                    break
                }
                socket.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
            case .armTimer(let deadline):
                armTimer(at: deadline)
            case .helloReceived(let address, let name):
                owner.helloReceived(self, address: address, name: name)
            case .silent(let time):
                owner.logger.warning("peer link silent, closing", metadata: logMetadata.merging(["silent-ms": "\(time.nanoseconds / 1_000_000)"]) { $1 })
            case .ended(let closure):
                self.closure = closure
                // Closed for good (not lingering after a GOODBYE): nothing is left to time.
                if machine.isClosed {
                    timer?.cancel()
                    timer = nil
                }
                owner.closed(self)
            }
        }
        guard established else { return }
        owner.established(self)
        if !leftover.isEmpty {
            inbound.writeBytes(leftover)
            openRecords()
        }
        scheduleFlush()
    }

    private func write(_ bytes: [UInt8]) {
        guard !bytes.isEmpty, let channel else { return }
        channel.writeAndFlush(channel.allocator.buffer(bytes: bytes), promise: nil)
    }

    // MARK: - Records

    /// Opens every whole record in `inbound` (and then in `more`, the rest of the same read),
    /// delivers their frames, and keeps a partial record for the next read.
    private func openRecords(then more: ByteBuffer? = nil) {
        guard var session else { return }
        var frames: [PeerFrame] = []
        // Every record of this read is decrypted into one buffer, sliced only once all are in:
        // cleared here, its storage is reused as soon as the last read's frames are gone.
        plaintexts.clear()
        plaintexts.reserveCapacity(inbound.readableBytes + (more?.readableBytes ?? 0))
        var lengths: [Int] = []
        do {
            while let length = try session.opener.next(from: &inbound, appendingTo: &plaintexts) {
                lengths.append(length)
            }
            if var more {
                if inbound.readableBytes == 0 {
                    inbound = more
                    inboundIsOwn = false
                } else {
                    inbound.writeBuffer(&more)
                }
                while let length = try session.opener.next(from: &inbound, appendingTo: &plaintexts) {
                    lengths.append(length)
                }
            }
            owner.metrics.recordsOpened.increment(by: lengths.count)
            for length in lengths {
                try inbox.receive(record: plaintexts.readSlice(length: length)!, into: &frames)
            }
        } catch {
            // The session is spent: nothing more is opened with it.
            self.session = nil
            inbound = ByteBuffer()
            owner.metrics.linkErrors.increment()
            owner.logger.warning("peer link broken", metadata: logMetadata.merging(["reason": "\(error)"]) { $1 })
            fail("\(error)")
            return
        }
        self.session = session
        // Every frame of an authenticated record is delivered, even on a link that is closing.
        for frame in frames { deliver(frame) }
        if !frames.isEmpty { owner.onReadComplete?(self) }
        // Keep only a partial record, if any, in a buffer of its own sized for the whole record
        // (records are decrypted out of `inbound`, so it is never written to, and NIO's read
        // buffer pool can reuse its buffers).
        if inbound.readableBytes == 0 {
            inbound = ByteBuffer()
            inboundIsOwn = false
        } else if !inboundIsOwn || inbound.readerIndex > 0 {
            let size = ((try? session.opener.nextRecordSize(in: inbound)) ?? nil) ?? 4
            var partial = ByteBuffer()
            partial.reserveCapacity(max(size, inbound.readableBytes))
            partial.writeBuffer(&inbound)
            inbound = partial
            inboundIsOwn = true
        }
    }

    private func deliver(_ frame: PeerFrame) {
        guard !frame.isLinkControl else {
            var actions: [PeerLinkAction] = []
            machine.control(frame, now: .now(), actions: &actions)
            perform(actions)
            return
        }
        usefulFrames &+= 1
        owner.onFrame?(frame, self)
    }

    private func scheduleFlush() {
        guard !flushScheduled, session != nil else { return }
        flushScheduled = true
        owner.eventLoop.execute { self.flush() }
    }

    /// Output buffers are started at most this large (a few records): big enough for one
    /// write system call to carry many records, small enough to come from the allocator's heap,
    /// not from fresh pages of `mmap` that fault on every write.
    static let outputChunk = 4 * (66_560 + RecordSealer.overhead)

    private func flush() {
        flushScheduled = false
        guard var session, let channel, !outbox.isEmpty else { return }
        var records = 0
        var unsealed = outbox.totalQueuedBytes
        var full: [ByteBuffer] = []
        var out = channel.allocator.buffer(capacity: min(Self.outputChunk, max(unsealed, 0) + 2 * RecordSealer.overhead))
        // Records are sealed straight from the outbox's queues, a few records per output buffer.
        // Buffers are written after the outbox is done: a write can re-enter (writability).
        while outbox.nextRecord({ record in
            if out.readableBytes > 0 && out.readableBytes + record.count + RecordSealer.overhead > Self.outputChunk {
                full.append(out)
                out = channel.allocator.buffer(capacity: min(Self.outputChunk, max(unsealed, 0) + 2 * RecordSealer.overhead))
            }
            session.sealer.seal(record, into: &out)
            unsealed -= record.count
        }) {
            records += 1
        }
        self.session = session
        owner.metrics.recordsSealed.increment(by: records)
        machine.wrote(at: .now())
        for buffer in full { channel.write(buffer, promise: nil) }
        channel.writeAndFlush(out, promise: nil)
    }

    // MARK: - Timers

    private func armTimer(at deadline: NIODeadline) {
        timer?.cancel()
        // A strong capture, not a weak one: an object that is ever referenced weakly keeps its
        // reference count in a side table, which makes every retain and release of it (several
        // per frame sent) take the runtime's slow path. A timer that fires after the link closed
        // does nothing; so a closed link lives at most until its timer's deadline.
        timer = owner.eventLoop.scheduleTask(deadline: deadline) { self.timerFired() }
    }

    private func timerFired() {
        var actions: [PeerLinkAction] = []
        machine.timerFired(now: .now(), usefulFrames: usefulFrames, actions: &actions)
        perform(actions)
    }
}

/// The link's side of the pipeline: bytes in, lifecycle events.
final class PeerLinkHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let link: PeerLink

    init(link: PeerLink) { self.link = link }

    func channelActive(context: ChannelHandlerContext) {
        link.channelActive()
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // A child channel added by a server is already active.
        if context.channel.isActive { link.channelActive() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        link.received(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        link.channelInactive()
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        link.writabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        link.fail("socket error: \(error)")
        context.close(promise: nil)
    }
}

struct PeerMetrics {
    let handshakesSucceeded = Counter(label: "skein_peer_handshakes_total")
    let recordsSealed = Counter(label: "skein_peer_records_sealed_total")
    let recordsOpened = Counter(label: "skein_peer_records_opened_total")
    let linkErrors = Counter(label: "skein_peer_link_errors_total")
    let linksUp = Recorder(label: "skein_peer_links", aggregate: false)

    func handshakeRejections(_ rejection: HandshakeRejection) -> Counter {
        Counter(label: "skein_peer_handshakes_rejected_total", dimensions: [("reason", rejection.metricReason)])
    }
}

extension HandshakeRejection {
    var metricReason: String {
        switch self {
        case .wrongNetwork: "wrong_network"
        case .unknownKey: "unknown_key"
        case .badProof: "bad_proof"
        case .wrongVersion: "wrong_version"
        case .malformed: "malformed"
        case .oversized: "oversized"
        case .replayed: "replayed"
        case .timedOut: "timed_out"
        case .noCommonCipher: "no_common_cipher"
        case .refusedByPeer: "refused_by_peer"
        }
    }
}

func splitHostPort(_ address: String) -> (String, Int)? {
    guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
        (0...65535).contains(port)
    else { return nil }
    var host = String(address[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    guard !host.isEmpty else { return nil }
    return (host, port)
}

func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0xf)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// ECONNREFUSED, directly or inside NIO's happy-eyeballs error.
func isConnectionRefused(_ error: any Error) -> Bool {
    if let error = error as? IOError { return error.errnoCode == ECONNREFUSED }
    if let error = error as? NIOConnectionError {
        return !error.connectionErrors.isEmpty && error.connectionErrors.allSatisfy { isConnectionRefused($0.error) }
    }
    return false
}
