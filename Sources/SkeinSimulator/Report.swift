/// How long observers took to see one thing (a death, a leave, new metadata), over every eligible
/// observer: members up when it happened and still up at the end, the subject excluded.
package struct Detection: Sendable, Equatable {
    /// Eligible observers (summed over subjects when a scenario has several).
    package var observers: Int
    /// Eligible observers that never saw it before the run ended.
    package var missing: Int
    /// Median and maximum per-observer latency in seconds; the maximum is "until all saw it"
    /// when `missing` is 0. Nil when no observer saw it.
    package var medianSeconds: Double?
    package var maxSeconds: Double?

    /// When the first observer suspected the subject (seconds from the event; crashes and
    /// pauses): "dead by all within X of the first missed probe round" is `maxSeconds` minus
    /// this, plus one probe interval (a probe fails a probe interval after it starts).
    package var firstSuspicionSeconds: Double?

    package var seenByAll: Bool { observers > 0 && missing == 0 }

    /// `maxSeconds − firstSuspicionSeconds`: from the first suspicion until all saw it.
    package var fromFirstSuspicionSeconds: Double? {
        guard seenByAll, let maxSeconds, let firstSuspicionSeconds else { return nil }
        return maxSeconds - firstSuspicionSeconds
    }

    init(latencies: [Double], observers: Int) {
        self.observers = observers
        self.missing = observers - latencies.count
        let sorted = latencies.sorted()
        medianSeconds = sorted.isEmpty ? nil : sorted[sorted.count / 2]
        maxSeconds = sorted.last
    }
}

/// Time until every member up sees every member up as alive, from a given moment.
package struct Convergence: Sendable, Equatable {
    /// "bootstrap", "join", "partition heal", "pause recovery", "restart", "loss end".
    package var label: String
    /// Nil when the views never became one before the run ended.
    package var seconds: Double?
}

/// What one run measured. Times are virtual seconds.
package struct SimulationReport: Sendable, Equatable {
    package var scenario: String
    package var members: Int
    package var profile: String
    package var seed: UInt64
    /// `SimulationBootstrap`'s raw value: "joins" or "converged".
    package var bootstrap: String
    package var loss: Double
    /// Length of the measured phase.
    package var seconds: Double
    package var convergences: [Convergence] = []
    package var crashDetection: Detection?
    /// Pauses: time until each observer held the paused member dead (a pause longer than the
    /// suspicion timeout: SIGSTOP 12 s).
    package var pauseDetection: Detection?
    package var leaveDetection: Detection?
    package var metadataPropagation: Detection?
    /// Churn and restarts: time until a new member is seen alive by all.
    package var joinDetection: Detection?
    /// Restarts: time until the old id is seen as left (superseded) by all.
    package var supersededDetection: Detection?
    /// Observers that declared a leaver, a restarted member's old id, or a paused member dead, and
    /// that suspected one (each counted once per subject).
    package var leaversReportedDead = 0
    package var supersededReportedDead = 0
    package var pausedDeclaredDead = 0
    package var pausedSuspected = 0
    /// Deaths declared about members that were running, never paused and reachable from the
    /// observer: every one is a false positive. A partition between the two, now or healed less
    /// than the largest suspicion timeout + 10 probe intervals ago, excuses it.
    package var falseDeaths = 0
    /// Distinct members falsely declared dead.
    package var falseDeathVictims = 0
    /// Suspicions of such members (they normally refute them).
    package var falseSuspicions = 0
    /// Deaths declared across a partition, during it or just after the heal (expected; they heal).
    package var deathsAcrossPartition = 0
    /// Pairs (observer, member) in which a running, reachable member was held dead: the
    /// longest such spell counted from the end of the last fault (a partition's heal, the end of
    /// a member's loss, a resume, a restart), i.e. how long a live member was treated as dead by
    /// anyone after the faults ended; nil when none was. Spells of members paused or down stop
    /// counting then (they were dead); a spell still open at the end counts to the end.
    package var heldDeadAfterFaultsSeconds: Double?
    /// The longest spell in which a running member was held dead by one observer, at any time
    /// (a partition's own spells included: the member was unreachable, not down).
    package var longestHeldDeadSeconds: Double?
    /// (observer, member) pairs in which a running member is held dead when the run ends.
    package var heldDeadAtEnd = 0
    /// Bytes sent per member per second before the first action (the whole run when none):
    /// nil when that window is empty.
    package var datagramBytesPerMemberPerSecond: Double?
    package var streamBytesPerMemberPerSecond: Double?
    /// Every member sees every member up as alive when the run ends.
    package var convergedAtEnd = false
    package var membersAtEnd = 0
    package var events = 0
    package var datagramsSent = 0
    package var datagramsLost = 0
    package var streamMessagesSent = 0
    package var streamFailures = 0
    /// Queue events processed (deliveries, wakeups, actions).
    package var steps = 0

    package func convergence(_ label: String) -> Convergence? {
        convergences.first { $0.label == label }
    }

    /// Two columns, metric and value, for a terminal.
    package var table: String {
        var rows: [(String, String)] = [
            ("scenario", scenario), ("members", "\(members) (\(membersAtEnd) up at end)"), ("profile", profile),
            ("seed", "\(seed)"), ("bootstrap", bootstrap == "converged" ? "converged view" : "all join member 0"),
            ("datagram loss", percent(loss)), ("measured time", seconds(seconds)),
        ]
        for convergence in convergences {
            rows.append(("converged after \(convergence.label)", convergence.seconds.map(seconds) ?? "never"))
        }
        func add(_ name: String, _ detection: Detection?) {
            guard let detection else { return }
            let median = detection.medianSeconds.map(seconds) ?? "-"
            let all = detection.seenByAll ? (detection.maxSeconds.map(seconds) ?? "-") : "not all (\(detection.missing) of \(detection.observers) missing)"
            rows.append(("\(name): median / all", "\(median) / \(all)"))
        }
        add("crash seen dead", crashDetection)
        add("paused member seen dead", pauseDetection)
        for (name, detection) in [("crash", crashDetection), ("pause", pauseDetection)] {
            if let detection, let since = detection.fromFirstSuspicionSeconds {
                rows.append(("\(name): first suspicion → dead by all", seconds(since)))
            }
        }
        add("leave seen left", leaveDetection)
        add("metadata propagated", metadataPropagation)
        add("joiner seen alive", joinDetection)
        add("old id seen superseded", supersededDetection)
        if leaveDetection != nil { rows.append(("leaver reported dead by", "\(leaversReportedDead)")) }
        if supersededDetection != nil { rows.append(("old id reported dead by", "\(supersededReportedDead)")) }
        if pausedDeclaredDead + pausedSuspected > 0 || scenario == "pause" {
            rows.append(("paused member suspected / declared dead by", "\(pausedSuspected) / \(pausedDeclaredDead)"))
        }
        rows += [
            ("live member held dead after faults", heldDeadAfterFaultsSeconds.map(seconds) ?? "never"),
            ("longest a live member was held dead", longestHeldDeadSeconds.map(seconds) ?? "never"),
            ("live members held dead at end (pairs)", "\(heldDeadAtEnd)"),
            ("false deaths (victims)", "\(falseDeaths) (\(falseDeathVictims))"),
            ("false suspicions", "\(falseSuspicions)"),
            ("deaths across partition", "\(deathsAcrossPartition)"),
            ("datagram bytes/member/s at rest", datagramBytesPerMemberPerSecond.map { rounded($0, 1) } ?? "-"),
            ("stream bytes/member/s at rest", streamBytesPerMemberPerSecond.map { rounded($0, 1) } ?? "-"),
            ("converged at end", convergedAtEnd ? "yes" : "no"),
            ("membership events", "\(events)"),
            ("datagrams sent (lost)", "\(datagramsSent) (\(datagramsLost))"),
            ("stream messages sent (failed)", "\(streamMessagesSent) (\(streamFailures))"),
            ("simulation steps", "\(steps)"),
        ]
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0 + String(repeating: " ", count: width - $0.0.count) + "  " + $0.1 }.joined(separator: "\n")
    }

    /// One JSON object (keys as the properties; absent metrics are null).
    package var json: String {
        func number(_ value: Double?) -> String { value.map { rounded($0, 6) } ?? "null" }
        func detection(_ value: Detection?) -> String {
            guard let value else { return "null" }
            return "{\"observers\":\(value.observers),\"missing\":\(value.missing),\"medianSeconds\":\(number(value.medianSeconds)),\"maxSeconds\":\(number(value.maxSeconds)),\"firstSuspicionSeconds\":\(number(value.firstSuspicionSeconds))}"
        }
        let convergenceJSON = convergences.map { "{\"label\":\"\($0.label)\",\"seconds\":\(number($0.seconds))}" }.joined(separator: ",")
        let fields: [(String, String)] = [
            ("scenario", "\"\(scenario)\""), ("members", "\(members)"), ("membersAtEnd", "\(membersAtEnd)"),
            ("profile", "\"\(profile)\""), ("seed", "\(seed)"), ("bootstrap", "\"\(bootstrap)\""), ("loss", number(loss)), ("seconds", number(seconds)),
            ("convergences", "[\(convergenceJSON)]"),
            ("crashDetection", detection(crashDetection)), ("pauseDetection", detection(pauseDetection)),
            ("leaveDetection", detection(leaveDetection)),
            ("metadataPropagation", detection(metadataPropagation)), ("joinDetection", detection(joinDetection)),
            ("supersededDetection", detection(supersededDetection)),
            ("leaversReportedDead", "\(leaversReportedDead)"), ("supersededReportedDead", "\(supersededReportedDead)"),
            ("pausedDeclaredDead", "\(pausedDeclaredDead)"), ("pausedSuspected", "\(pausedSuspected)"),
            ("heldDeadAfterFaultsSeconds", number(heldDeadAfterFaultsSeconds)), ("longestHeldDeadSeconds", number(longestHeldDeadSeconds)),
            ("heldDeadAtEnd", "\(heldDeadAtEnd)"),
            ("falseDeaths", "\(falseDeaths)"), ("falseDeathVictims", "\(falseDeathVictims)"),
            ("falseSuspicions", "\(falseSuspicions)"), ("deathsAcrossPartition", "\(deathsAcrossPartition)"),
            ("datagramBytesPerMemberPerSecond", number(datagramBytesPerMemberPerSecond)),
            ("streamBytesPerMemberPerSecond", number(streamBytesPerMemberPerSecond)),
            ("convergedAtEnd", convergedAtEnd ? "true" : "false"), ("events", "\(events)"),
            ("datagramsSent", "\(datagramsSent)"), ("datagramsLost", "\(datagramsLost)"),
            ("streamMessagesSent", "\(streamMessagesSent)"), ("streamFailures", "\(streamFailures)"), ("steps", "\(steps)"),
        ]
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }

    private func seconds(_ value: Double) -> String { rounded(value, 3) + " s" }
    private func percent(_ value: Double) -> String { rounded(value * 100, 2) + " %" }
}

/// Fixed-point text without Foundation: `rounded(1.23456, 3)` is "1.235".
func rounded(_ value: Double, _ digits: Int) -> String {
    guard value.isFinite else { return "null" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = Int64(scaled / scale)
    let fraction = Int64(scaled - Double(whole) * scale)
    let sign = value < 0 && scaled > 0 ? "-" : ""
    guard digits > 0 else { return sign + "\(whole)" }
    let fractionText = String(fraction)
    return sign + "\(whole)." + String(repeating: "0", count: max(0, digits - fractionText.count)) + fractionText
}
