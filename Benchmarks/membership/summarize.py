#!/usr/bin/env python3
"""Side-by-side summary of Serf (serfbench.py) and Skein (skeinbench.py) JSONL records.

Usage: summarize.py SITTING_DIR            (reads SITTING_DIR/serf/results/serf.jsonl,
                                            SITTING_DIR/skein.jsonl, SITTING_DIR/load.txt)
       summarize.py --serf A.jsonl --skein B.jsonl
Prints, per measure and N, median / max over repetitions (n = how many), Serf beside Skein,
as a Markdown table. Incomplete runs (not every observer saw the event) are counted apart.
"""
import argparse, json, os, statistics
from collections import defaultdict


def measures(r):
    """(measure, value) pairs of one scenario result; value None = incomplete."""
    s = r.get("scenario")
    out = []
    if "error" in r:
        return [(f"{s} {r.get('size', '')} ERROR".replace("  ", " "), None)]
    if s == "join":
        out.append(("join: all converged (s)", r["all_converged_s"] if r.get("converged") else None))
    elif s == "kill":
        ok = r.get("all_seen")
        out += [("kill -9: first suspicion (s)", r.get("first_suspect_s") or 0),
                ("kill -9: first saw dead (s)", r.get("first_s")),
                ("kill -9: all saw dead (s)", r.get("last_s") if ok else None),
                ("kill -9: healthy declared dead", r.get("collateral_false_failed"))]
    elif s == "leave":
        ok = r.get("all_seen")
        out += [("leave: all saw left (s)", r.get("last_s") if ok else None),
                ("leave: observers saying dead instead", r.get("failed_instead"))]
    elif s == "steady":
        out += [("rest: CPU % of a core per agent", r["cpu_pct_per_agent"]["median"]),
                ("rest: UDP B/s per agent", r["udp_bytes_per_agent_s"]),
                ("rest: TCP B/s per agent", r["tcp_bytes_per_agent_s"]),
                ("rest: UDP pkt/s per agent", r["udp_pkts_per_agent_s"]),
                ("rest: TCP pkt/s per agent", r["tcp_pkts_per_agent_s"]),
                ("rest: RSS MB per agent", round(r["rss_kb"]["median"] / 1024, 1)),
                ("rest: false deaths", r["false_failed_events"])]
    elif s == "stop":
        p = f"SIGSTOP {r['pause_s']:g}s"
        out += [(f"{p}: suspected (1=yes)", 1 if r.get("suspected") else 0),
                (f"{p}: marked dead by (of {r['observers']})", r.get("marked_failed_by"))]
        if r.get("suspected"):
            out.append((f"{p}: first suspicion (s)", r.get("first_suspect_s")))
        if r.get("marked_failed_by"):
            out.append((f"{p}: first dead (s)", r.get("first_failed_s")))
        if r.get("marked_failed_by") and "all_failed_s" in r:
            out.append((f"{p}: all saw dead (s)", r.get("all_failed_s")))
        if r.get("marked_failed_by"):
            out.append((f"{p}: alive again everywhere after SIGCONT (s)",
                        r.get("all_alive_again_after_cont_s")))
        if r.get("all_clear_after_cont_s") is not None:
            out.append((f"{p}: suspect/dead cleared everywhere after SIGCONT (s)",
                        r.get("all_clear_after_cont_s")))
        out.append((f"{p}: healthy declared dead", r.get("collateral_false_failed")))
    elif s == "starve":
        # The quota per CFS period says how hard: 2 % of 100 ms barely throttles an idle agent,
        # 0.1 % of 1 s (1 ms of CPU a second) is less than an idle agent needs.
        p = f"starve {r.get('quota_pct', 0):g}% of {r.get('period_us', 100000) / 1000:g} ms"
        out += [(f"{p}: periods throttled", r.get("nr_throttled")),
                (f"{p}: dead verdicts about victim", r.get("failed_events_about_victim")),
                (f"{p}: healthy declared dead (distinct)", r.get("distinct_healthy_declared_failed")),
                (f"{p}: suspicions raised by victim", r.get("suspicions_raised_by_victim")),
                (f"{p}: suspicions raised by others", r.get("suspicions_raised_by_others"))]
        if "victim_state_changes_max_per_observer" in r:
            out.append((f"{p}: victim state changes, max per observer",
                        r["victim_state_changes_max_per_observer"]))
        if "alive_everywhere_after_starvation_s" in r:
            out.append((f"{p}: alive everywhere after the quota is lifted (s)",
                        r["alive_everywhere_after_starvation_s"]))
        if "victim_stalls" in r:
            out.append((f"{p}: victim's stalls / accusations withheld",
                        f"{r['victim_stalls']} / {r['victim_accusations_withheld']}"))
    elif s == "loss":
        p = f"loss {r['udp_loss_pct']:g}%{' +TCP' if r.get('tcp_too') else ''}"
        out += [(f"{p}: suspicions raised", r.get("suspicions")),
                (f"{p}: dead verdicts", r.get("failed_events")),
                (f"{p}: distinct healthy declared dead", r.get("distinct_declared_failed")),
                (f"{p}: refutations", r.get("refutes"))]
    elif s == "tags":
        sz = r["size"]
        ok = r.get("all_seen")
        out += [(f"metadata {sz} B: median seen (s)", r.get("median_s")),
                (f"metadata {sz} B: all saw it (s)", r.get("last_s") if ok else None)]
    elif s == "event":
        out.append(("user event: all saw it (s)", r.get("last_s") if r.get("all_seen") else None))
    return out


def load(fn, system, rows, meta):
    if not fn or not os.path.exists(fn):
        return
    for line in open(fn):
        rec = json.loads(line)
        n = rec["n"]
        if rec.get("error"):
            meta.append(f"{system} N={n} rep {rec['rep']}: {rec['error']}")
        if rec.get("loadavg_start"):
            meta.append(f"{system} N={n} rep {rec['rep']}: load {rec['loadavg_start'][0]:.2f}"
                        f" -> {rec.get('loadavg_end', ['?'])[0]}")
        for r in rec["results"]:
            for k, v in measures(r):
                rows[(k, n)][system].append(v)


def fmt(xs):
    if not xs:
        return ""
    got = [x for x in xs if x is not None]
    bad = len(xs) - len(got)
    if not got:
        return f"incomplete ×{bad}"
    if any(isinstance(x, str) for x in got):  # a pair such as "stalls / withheld": as recorded
        return ", ".join(map(str, got)) + f" (n={len(got)})"
    med, mx = statistics.median(got), max(got)
    s = f"{med:.3g}" if med == mx or len(got) == 1 else f"{med:.3g} / {mx:.3g}"
    s += f" (n={len(got)})"
    if bad:
        s += f", incomplete ×{bad}"
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sitting", nargs="?")
    ap.add_argument("--serf")
    ap.add_argument("--skein")
    ap.add_argument("--verbose", action="store_true", help="also print load per Skein rep")
    a = ap.parse_args()
    serf, skein, loadf = a.serf, a.skein, None
    if a.sitting:
        serf = serf or os.path.join(a.sitting, "serf", "results", "serf.jsonl")
        skein = skein or os.path.join(a.sitting, "skein.jsonl")
        loadf = os.path.join(a.sitting, "load.txt")
    rows = defaultdict(lambda: defaultdict(list))
    meta = []
    load(serf, "serf", rows, meta)
    load(skein, "skein", rows, meta)
    order = []
    for k, n in rows:
        if k not in order:
            order.append(k)
    print("| measure | N | Serf median / max | Skein median / max |")
    print("|---|---|---|---|")
    for k in order:
        for n in sorted({n for kk, n in rows if kk == k}):
            d = rows[(k, n)]
            print(f"| {k} | {n} | {fmt(d.get('serf', []))} | {fmt(d.get('skein', []))} |")
    if loadf and os.path.exists(loadf):
        print("\nLoad average (1/5/15 min) when each bench started:")
        for line in open(loadf):
            print("   " + line.rstrip())
    errs = [m for m in meta if "load" not in m or a.verbose]
    if errs:
        print("\nNotes:")
        for m in errs:
            print("   " + m)


if __name__ == "__main__":
    main()
