// Why the relay, or a part of it, could not start (thrown by RelayService.run).

/// Why the relay could not start.
public enum RelayStartupError: Error, CustomStringConvertible {
    case cannotListen([String])
    case cannotListenAdmin(String)

    public var description: String {
        switch self {
        case .cannotListen(let failures):
            "cannot listen for clients: " + failures.joined(separator: "; ")
        case .cannotListenAdmin(let failure):
            "cannot listen for the admin endpoint (--admin-port): " + failure
        }
    }
}

/// Why the mesh could not start.
public enum MeshStartupError: Error, CustomStringConvertible {
    case badAddress(String)
    case cannotBind(String)
    case noKeyring

    public var description: String {
        switch self {
        case .badAddress(let a): "\(a) is not host:port"
        case .cannotBind(let why): "cannot listen for relay-to-relay traffic (--bind): \(why)"
        case .noKeyring: "a relay in a mesh needs the network key"
        }
    }
}
