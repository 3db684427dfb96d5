import Foundation

/// Columns of text aligned with two spaces between them, the way `serf members` prints.
///
/// Pure: no I/O, no terminal detection. Widths count characters (the admin endpoint's names,
/// addresses and ids are ASCII). A row may carry an ANSI colour for the whole line; it is
/// applied after padding, so colour never disturbs the alignment, and only when `TextStyle`
/// says the output is a terminal that wants colour.
struct TextTable {
    var header: [String]?
    var rows: [[String]] = []
    /// Per row (same index as `rows`): the ANSI SGR code to print it in, or nil.
    var colours: [String?] = []
    /// Indentation of every line.
    var indent = ""

    init(header: [String]? = nil, indent: String = "") {
        self.header = header
        self.indent = indent
    }

    mutating func append(_ row: [String], colour: String? = nil) {
        rows.append(row)
        colours.append(colour)
    }

    /// The table, one line per row (header first), each ending in a newline; empty if there are no rows
    /// and no header. Trailing spaces are trimmed.
    func render(style: TextStyle = .plain) -> String {
        let all = (header.map { [$0] } ?? []) + rows
        guard let columns = all.map(\.count).max(), columns > 0 else { return "" }
        let widths = (0..<columns).map { column in all.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
        var out = ""
        for (index, row) in all.enumerated() {
            var line = ""
            for (column, cell) in row.enumerated() {
                if column > 0 { line += "  " }
                line += cell
                if column < row.count - 1 { line += String(repeating: " ", count: max(0, widths[column] - cell.count)) }
            }
            while line.last == " " { line.removeLast() }
            let rowIndex = index - (header == nil ? 0 : 1)
            if rowIndex < 0 {
                line = style.paint(line, TextStyle.bold)
            } else if rowIndex < colours.count, let colour = colours[rowIndex] {
                line = style.paint(line, colour)
            }
            out += indent + line + "\n"
        }
        return out
    }
}

/// Whether output may use ANSI colour: only on a terminal, and never with NO_COLOR set
/// (https://no-color.org) or TERM=dumb.
struct TextStyle: Sendable {
    var colour: Bool

    static let plain = TextStyle(colour: false)

    static let bold = "1"
    static let red = "31"
    static let yellow = "33"

    /// For standard output as it is now.
    static var standardOutput: TextStyle {
        let environment = ProcessInfo.processInfo.environment
        let noColour = !(environment["NO_COLOR"] ?? "").isEmpty || environment["TERM"] == "dumb"
        return TextStyle(colour: isatty(STDOUT_FILENO) == 1 && !noColour)
    }

    func paint(_ text: String, _ code: String) -> String {
        colour ? "\u{1B}[\(code)m\(text)\u{1B}[0m" : text
    }
}

/// The admin endpoint's JSON as text for people (`skein status`, `skein members`). Pure: from
/// decoded JSON (JSONSerialization's values) to a String.
enum AdminText {
    // MARK: - /members

    /// `/members` as a table, one row per relay, with suspect and dead relays marked in upper case
    /// with a `!`; then a note if a membership counter wants attention, and last a summary line
    /// ("3 members: 2 alive, 1 dead").
    static func members(_ object: [String: Any], style: TextStyle = .plain) -> String? {
        guard let members = object["members"] as? [[String: Any]] else { return nil }
        var table = TextTable(header: ["NAME", "NODE", "ADDRESS", "STATUS", "INC", "ZONE", "LOAD", "CLUSTERS", "GATEWAY TO"])
        var counts: [String: Int] = [:]
        for member in members {
            let status = string(member["status"], or: "?")
            counts[status, default: 0] += 1
            let (shown, colour) = statusCell(status)
            let name = string(member["name"]) + (member["self"] as? Bool == true ? " *" : "")
            table.append([
                name, String(string(member["node"]).prefix(12)), string(member["address"]), shown,
                number(member["incarnation"]), zone(member["zone"]), member["load"].map(number) ?? "?",
                keys(member["clusters"]), keys(member["gateways"]),
            ], colour: colour)
        }
        var out = table.render(style: style) + "\n"
        if let stats = object["stats"] as? [String: Any] {
            let notes = statsNotes(stats)
            if !notes.isEmpty { out += style.paint(notes, TextStyle.yellow) + "\n" }
        }
        // Last, so scripts and eyes find it in one place.
        return out + summary(total: members.count, counts: counts) + "\n"
    }

    /// "5 members: 3 alive, 1 suspect, 1 dead" (left and any other status after those, zero counts left out).
    static func summary(total: Int, counts: [String: Int]) -> String {
        let order = ["alive", "suspect", "dead", "left"]
        let others = counts.keys.filter { !order.contains($0) }.sorted()
        let parts = (order + others).compactMap { status in counts[status].flatMap { $0 > 0 ? "\($0) \(status)" : nil } }
        let noun = total == 1 ? "member" : "members"
        return parts.isEmpty ? "\(total) \(noun)" : "\(total) \(noun): " + parts.joined(separator: ", ")
    }

    /// How a member's status is shown: suspect and dead stand out even without colour.
    static func statusCell(_ status: String) -> (String, String?) {
        switch status {
        case "suspect": ("SUSPECT !", TextStyle.yellow)
        case "dead": ("DEAD !", TextStyle.red)
        default: (status, nil)
        }
    }

    /// The membership counters worth an operator's attention, or "" when all is quiet.
    private static func statsNotes(_ stats: [String: Any]) -> String {
        let labels = [
            ("localHealth", "local health"), ("udpFailedWhileStreamWorked", "UDP probes failed while TCP worked"),
            ("stalls", "timer stalls"), ("accusationsWithheld", "accusations withheld"),
        ]
        let parts = labels.compactMap { key, label -> String? in
            guard let value = stats[key] as? Int, value > 0 else { return nil }
            return "\(label) \(value)"
        }
        return parts.isEmpty ? "" : "note: " + parts.joined(separator: ", ") + " (Docs/operations.md)"
    }

    // MARK: - /status

    /// `/status` as sections: the relay, its local clients, its mesh and links, each federation.
    static func status(_ object: [String: Any], style: TextStyle = .plain) -> String? {
        guard let relay = object["relay"] as? [String: Any] else { return nil }
        var sections: [String] = []

        var head = TextTable()
        head.append(["network", string(relay["network"])])
        let extensions = list(relay["extensions"])
        head.append(["protocol", string(relay["protocol"]) + (extensions == "-" ? "" : " (\(extensions))")])
        head.append(["keys", list(relay["keys"])])
        sections.append(style.paint("Relay", TextStyle.bold) + "\n" + indented(head))

        if let clients = object["clients"] as? [String: Any] {
            var table = TextTable()
            table.append(["connections", number(clients["connections"])])
            table.append(["pending requests", number(clients["pendingRequests"])])
            table.append(["surveys", number(clients["surveys"])])
            table.append(["tunnels", number(clients["tunnels"])])
            table.append(["clusters", counted(clients["clusters"])])
            table.append(["topics", counted(clients["topics"])])
            sections.append(style.paint("Clients", TextStyle.bold) + "\n" + indented(table))
        }

        if let mesh = object["mesh"] as? [String: Any] {
            var table = TextTable()
            table.append(["name", string(mesh["name"])])
            table.append(["node", string(mesh["node"])])
            table.append(["address", string(mesh["address"])])
            table.append(["zone", zone(mesh["zone"])])
            let links = mesh["links"] as? [[String: Any]] ?? []
            table.append(["links", "\(links.count)"])
            var text = style.paint("Mesh", TextStyle.bold) + "\n" + indented(table)
            if !links.isEmpty {
                var linkTable = TextTable(header: ["PEER", "ADDRESS", "NODE", "DIRECTION", "KEY", "CIPHER"], indent: "  ")
                for link in links {
                    linkTable.append([
                        dash(string(link["peer"])), dash(string(link["address"])), dash(String(string(link["node"]).prefix(12))),
                        dash(string(link["direction"])), dash(string(link["keyId"])), dash(string(link["cipher"])),
                    ])
                }
                text += "\n" + linkTable.render(style: style)
            }
            sections.append(text)
        }

        for federation in object["federation"] as? [[String: Any]] ?? [] {
            let reachable = federation["reachable"] as? Bool == true
            var table = TextTable()
            table.append(["listen", dash(string(federation["listen"]))])
            table.append(["gateways", list(federation["gateways"])])
            table.append(["reachable", reachable ? "yes" : "NO !"], colour: reachable ? nil : TextStyle.red)
            table.append(["we export", exports(federation["weExport"])])
            table.append(["they export", federation["theyExport"] is [Any] ? exports(federation["theyExport"]) : "? (no GATEWAY frame from them yet)"])
            table.append(["keys", list(federation["keys"])])
            var text = style.paint("Federation with \(string(federation["network"]))", TextStyle.bold) + "\n" + indented(table, style: style)
            let links = federation["links"] as? [[String: Any]] ?? []
            if !links.isEmpty {
                var linkTable = TextTable(
                    header: ["GATEWAY", "ADDRESS", "NODE", "DIRECTION", "KEY", "DESIGNATED", "THEIR INTEREST", "OUR INTEREST"], indent: "  ")
                for link in links {
                    linkTable.append([
                        dash(string(link["peer"])), dash(string(link["address"])), dash(String(string(link["node"]).prefix(12))),
                        dash(string(link["direction"])), dash(string(link["keyId"])), link["designated"] as? Bool == true ? "yes" : "no",
                        number(link["theirInterest"]), number(link["ourInterest"]),
                    ])
                }
                text += "\n" + linkTable.render(style: style)
            }
            sections.append(text)
        }
        return sections.joined(separator: "\n")
    }

    // MARK: - Cells

    private static func indented(_ table: TextTable, style: TextStyle = .plain) -> String {
        var table = table
        table.indent = "  "
        return table.render(style: style)
    }

    private static func string(_ value: Any?, or fallback: String = "") -> String {
        switch value {
        case let s as String: s
        case let i as Int: String(i)
        default: fallback
        }
    }

    private static func number(_ value: Any?) -> String {
        switch value {
        case let i as Int: String(i)
        case let d as Double: String(d)
        default: "?"
        }
    }

    private static func dash(_ text: String) -> String { text.isEmpty ? "-" : text }

    /// A zone: "?" when the member's metadata has not arrived (null), "-" when it has none.
    private static func zone(_ value: Any?) -> String {
        guard let zone = value as? String else { return "?" }
        return dash(zone)
    }

    /// An array of strings, comma-separated; "-" when empty.
    private static func list(_ value: Any?) -> String {
        guard let values = value as? [Any] else { return "-" }
        return dash(values.map { string($0) }.joined(separator: ", "))
    }

    /// Export rules, comma-separated; "nothing" when empty.
    private static func exports(_ value: Any?) -> String {
        let text = list(value)
        return text == "-" ? "nothing" : text
    }

    /// An object's keys, sorted and comma-separated: "?" when null (no metadata yet), "-" when empty.
    private static func keys(_ value: Any?) -> String {
        guard let object = value as? [String: Any] else { return "?" }
        return dash(object.keys.sorted().joined(separator: ","))
    }

    /// A name → count object as "echo (1), news (2)"; "-" when empty.
    private static func counted(_ value: Any?) -> String {
        guard let object = value as? [String: Any] else { return "-" }
        return dash(object.keys.sorted().map { "\($0) (\(number(object[$0])))" }.joined(separator: ", "))
    }
}
