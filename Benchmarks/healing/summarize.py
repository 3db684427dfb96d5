#!/usr/bin/env python3
"""Side-by-side table of a healing sitting: summarize.py DIR (reads DIR/skein.jsonl, DIR/serf.jsonl).
Per scenario and peer, the worst over repetitions: a live relay held dead during / after the
fault, time until every host lists every other alive, subscribers resumed (Skein), SIGSTOP 12 s
dead by all after the first missed probe."""
import json, os, sys


def load(path):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip()]


def worst(values):
    values = list(values)
    if any(v is None for v in values):
        return None
    return max(values) if values else None


def fmt(v, unit=" s"):
    return "never" if v is None else f"{v:.2f}{unit}"


def main():
    d = sys.argv[1]
    rows = {}
    for peer in ("skein", "serf"):
        for r in load(os.path.join(d, f"{peer}.jsonl")):
            rows.setdefault(r["scenario"], {}).setdefault(peer, []).append(r)
    print(f"{'scenario':10} {'peer':6} {'runs':>4} {'held dead during':>16} {'dead after end':>14} {'all alive after':>15} {'subscribers back':>16}  SIGSTOP 12 s: dead by all")
    for scenario in ("loss", "partition", "pause", "restart", "stop12"):
        for peer in ("skein", "serf"):
            runs = rows.get(scenario, {}).get(peer, [])
            if not runs:
                continue
            during = worst(r["held_dead_during"] for r in runs)
            after = worst(r["dead_after_end"] for r in runs)
            agree = worst(r["agreement_after"] for r in runs)
            subs = [s["resume_after"] for r in runs for s in r["subscribers"].values()]
            back = fmt(worst(subs)) if subs else "-"
            stop = ""
            if scenario == "stop12":
                stop = fmt(worst(r.get("dead_by_all") for r in runs)) + " after SIGSTOP"
                if peer == "skein":  # `serf members` shows no suspect state, so no first suspicion
                    stop += ", " + fmt(worst(r.get("dead_by_all_after_first_missed_probe") for r in runs)) + " after the first missed probe"
            print(f"{scenario:10} {peer:6} {len(runs):>4} {fmt(during):>16} {fmt(after):>14} {fmt(agree):>15} {back:>16}  {stop}")


if __name__ == "__main__":
    main()
