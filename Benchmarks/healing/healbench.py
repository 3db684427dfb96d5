#!/usr/bin/env python3
"""Membership healing on real relays: five `skein relay` processes on one LAN of network
namespaces (a bridge in a hub namespace, one veth per relay), a publisher on r1 sending events
at a steady rate to a subscriber on each other relay, and faults one after another (issue 17):

  loss      30 % of r3's packets dropped both ways (nftables `numgen random`) for --fault s
  partition r4 cut off completely (nftables drop) for --fault s
  pause     r5 SIGSTOPped for --pause s, then SIGCONT
  restart   r2 killed with SIGKILL, started again under its name --restart-after s later
  stop12    r5 SIGSTOPped for 12 s: time until every other relay holds it dead

For each fault it reports, from `/members` of every relay polled every --poll s and from the
subscribers' records:
  held_dead_during   longest time any relay held a running, reachable relay dead while the fault
                     lasted (loss: must be 0; partition/pause: the victim, expected)
  dead_after_end     how long after the fault ended some relay still held a running relay dead
  agreement_after    time after the fault ended until every relay lists every other alive
                     (restart: the new process), and stays so
  resume_after       per subscriber, time after the fault ended until it received an event
                     published after the end; lost / duplicated / out-of-order events
  dead_by_all        stop12: time from SIGSTOP until every other relay holds the victim dead

With --peer serf the same LAN, faults and membership measurements run HashiCorp Serf agents
(`/usr/bin/serf`, encrypted, LAN profile) instead, for the side-by-side table; Serf has no
publish/subscribe, so there are no subscriber figures.

Usage (root; build first):  Benchmarks/healing/run [--scenarios loss,partition,pause,restart] ...
Prints a table, and one JSON object per scenario with --json. Everything it creates (namespaces,
nft tables, processes) is removed on exit.
"""
import argparse, ctypes, json, os, signal, socket, struct, subprocess, sys, threading, time, urllib.request

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL("libc.so.6", use_errno=True)
T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def enter(ns):
    """Moves the calling thread (only) into network namespace `ns`."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def sh(*args, check=True, input=None):
    r = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.returncode}: {r.stderr.strip()}")
    return r


# ---------- relay protocol (raw client) ----------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pstr(b):
    if isinstance(b, str):
        b = b.encode()
    return varint(len(b)) + b


class Reader:
    def __init__(self, s):
        self.s, self.buf = s, bytearray()

    def need(self, n):
        while len(self.buf) < n:
            d = self.s.recv(65536)
            if not d:
                raise EOFError
            self.buf += d

    def byte(self):
        self.need(1)
        b = self.buf[0]
        del self.buf[0]
        return b

    def varint(self):
        shift = value = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    def bytes(self):
        n = self.varint()
        self.need(n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"\x00" + pstr("iris-client-magic") + pstr("v1.0-draft2") + pstr(""))
    r = Reader(s)
    if r.byte() != 0 or r.bytes() != b"iris-relay-magic" or r.bytes() != b"v1.0-draft2":
        raise RuntimeError("bad INIT reply")
    s.settimeout(None)
    return s, r


# ---------- the LAN ----------

class Lan:
    def __init__(self, tag, n):
        self.tag, self.n = tag, n
        self.hub = f"{tag}hub"
        self.ns = [f"{tag}r{i}" for i in range(1, n + 1)]
        self.made = []

    def addr(self, i):  # i: 0-based
        return f"10.78.0.{i + 1}"

    def up(self):
        for ns in [self.hub] + self.ns:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.ns):
            a, b = f"{self.tag}a{i}", f"{self.tag}b{i}"
            sh("ip", "link", "add", a, "netns", ns, "type", "veth", "peer", "name", b, "netns", self.hub)
            sh("ip", "-n", ns, "link", "set", a, "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", self.hub, "link", "set", b, "master", "br0")
            sh("ip", "-n", self.hub, "link", "set", b, "up")

    def fault(self, i, rule):
        """`rule`: an nft statement applied to every packet in and out of relay i's eth0."""
        spec = f"""table inet skheal {{
  chain in {{ type filter hook input priority -10; iifname "eth0" {rule}; }}
  chain out {{ type filter hook output priority -10; oifname "eth0" {rule}; }}
}}"""
        sh("ip", "netns", "exec", self.ns[i], "nft", "-f", "-", input=spec)

    def clear(self, i):
        sh("ip", "netns", "exec", self.ns[i], "nft", "delete", "table", "inet", "skheal", check=False)

    def down(self):
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
        self.made = []


# ---------- relays ----------

class Relay:
    def __init__(self, bench, i):
        self.bench, self.i, self.name = bench, i, f"r{i + 1}"
        self.proc, self.stopped, self.log = None, False, []

    def start(self):
        b = self.bench
        if b.args.peer == "serf":
            return self.start_serf()
        args = ["ip", "netns", "exec", b.lan.ns[self.i], b.skein, "relay", "--network", "heal", "--key-file", b.key,
                "--name", self.name, "--bind", f"{b.lan.addr(self.i)}:7946", "--client-port", "55555",
                "--client-host", "127.0.0.1", "--admin-port", "55557", "--log-level", os.environ.get("HEAL_LOG_LEVEL", "info"),
                "--gossip-profile", b.args.profile]
        if self.i != 0:
            args += ["--seed", f"{b.lan.addr(0)}:7946", "--seed", f"{b.lan.addr(1 if self.i != 1 else 2)}:7946"]
        else:
            args += ["--seed", f"{b.lan.addr(1)}:7946"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stopped = False
        threading.Thread(target=self._logs, args=(self.proc,), daemon=True).start()

    def start_serf(self):
        b = self.bench
        args = ["ip", "netns", "exec", b.lan.ns[self.i], b.args.serf, "agent", f"-node={self.name}",
                f"-bind={b.lan.addr(self.i)}:7946", "-rpc-addr=127.0.0.1:7373", f"-encrypt={b.serf_key}",
                "-profile=lan", "-log-level=info"]
        if self.i != 0:
            args += [f"-join={b.lan.addr(0)}:7946", "-retry-join", f"{b.lan.addr(0)}:7946"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.stopped = False
        threading.Thread(target=self._serf_logs, args=(self.proc,), daemon=True).start()

    def _serf_logs(self, proc):
        for line in proc.stdout:
            self.log.append((now(), line.rstrip()))

    def _logs(self, proc):
        for line in proc.stderr:
            self.log.append((now(), line.rstrip()))

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self):
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None and not self.stopped


class Bench:
    def __init__(self, args):
        self.args = args
        self.skein = os.path.abspath(args.skein)
        self.lan = Lan(f"skh{os.getpid() % 10000}", 5)
        self.relays = [Relay(self, i) for i in range(5)]
        self.views = {}          # name -> list of (t, {name: (node, status, incarnation)}, selfNode)
        self.received = {}       # subscriber relay name -> list of (t, seq)
        self.published = []      # (t, seq)
        self.stop_all = False
        self.key = None
        self.stats = {}          # name -> (latest /members stats, [own incarnation])

    # -- threads --
    def serf_poller(self, relay):
        out = self.views.setdefault(relay.name, [])
        status = {"alive": "alive", "failed": "dead", "left": "left", "leaving": "alive", "suspect": "suspect"}
        while not self.stop_all:
            t = now()
            try:
                r = subprocess.run(["ip", "netns", "exec", self.lan.ns[relay.i], self.args.serf, "members", "-format=json",
                                    "-rpc-addr=127.0.0.1:7373"], capture_output=True, text=True, timeout=1)
                doc = json.loads(r.stdout)
                # Serf names are identities: a restart keeps the name (the node id is the name).
                view = {m["name"]: (m["name"], status.get(m["status"], m["status"]), 0) for m in doc["members"] if m["name"] != relay.name}
                out.append((t, view, relay.name))
            except Exception:
                pass
            time.sleep(self.args.poll)

    def poller(self, relay):
        if self.args.peer == "serf":
            return self.serf_poller(relay)
        enter(self.lan.ns[relay.i])
        out = self.views.setdefault(relay.name, [])
        while not self.stop_all:
            t = now()
            try:
                with urllib.request.urlopen("http://127.0.0.1:55557/members", timeout=1) as r:
                    doc = json.load(r)
                # A restarted relay is listed twice (its old id left, its new one): keep, per
                # name, the row that is not left, if any.
                view = {}
                for m in doc["members"]:
                    if m.get("self"):
                        continue
                    if m["name"] not in view or view[m["name"]][1] == "left":
                        view[m["name"]] = (m["node"], m["status"], m["incarnation"])
                self.stats[relay.name] = (doc.get("stats"), [m["incarnation"] for m in doc["members"] if m.get("self")])
                out.append((t, view, doc["self"]))
            except Exception:
                pass
            time.sleep(self.args.poll)

    def publisher(self):
        enter(self.lan.ns[0])
        seq, interval = 0, 1.0 / self.args.rate
        s = None
        next_at = time.monotonic()
        while not self.stop_all:
            try:
                if s is None:
                    s, _ = connect(55555)
                seq += 1
                s.sendall(b"\x08" + pstr("heal") + pstr(f"{seq}"))
                self.published.append((now(), seq))
            except Exception:
                s = None
                time.sleep(0.2)
                continue
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    def subscriber(self, relay):
        enter(self.lan.ns[relay.i])
        out = self.received.setdefault(relay.name, [])
        while not self.stop_all:
            try:
                s, r = connect(55555)
                s.sendall(b"\x06" + pstr("heal"))
                while not self.stop_all:
                    op = r.byte()
                    if op == 0x08:
                        r.bytes()
                        out.append((now(), int(r.bytes())))
                    elif op == 0x02:
                        r.bytes()
                        break
                    else:
                        raise RuntimeError(f"unexpected frame {op}")
            except Exception:
                time.sleep(0.2)

    # -- views --
    def truth(self):
        """name -> node id of the running process (from its own /members), for running relays."""
        ids = {}
        for relay in self.relays:
            v = self.views.get(relay.name)
            if relay.running and v:
                ids[relay.name] = v[-1][2]
        return ids

    def wait_converged(self, limit):
        deadline = now() + limit
        while now() < deadline:
            if self.all_alive_now():
                return True
            time.sleep(0.2)
        return False

    def all_alive_now(self):
        ids = self.truth()
        if len(ids) != 5:
            return False
        for name in ids:
            view = self.views[name][-1][1]
            for other, node in ids.items():
                if other != name and (view.get(other, ("", "", 0))[0] != node or view[other][1] != "alive"):
                    return False
        return True

    def run(self):
        self.lan.up()
        self.key = f"/tmp/{self.lan.tag}.key"
        if self.args.peer == "serf":
            self.serf_key = sh(self.args.serf, "keygen").stdout.strip()
        else:
            sh(self.skein, "keygen", "-o", self.key)
        for relay in self.relays:
            relay.start()
            if relay.i == 0 and self.args.peer == "serf":
                time.sleep(1.0)  # a Serf agent whose -join fails at start exits: the seed first
        for relay in self.relays:
            threading.Thread(target=self.poller, args=(relay,), daemon=True).start()
        if not self.wait_converged(45):
            raise RuntimeError("the five hosts did not converge within 45 s")
        if self.args.peer != "serf":
            for relay in self.relays[1:]:
                threading.Thread(target=self.subscriber, args=(relay,), daemon=True).start()
            time.sleep(1.5)
            threading.Thread(target=self.publisher, daemon=True).start()
        time.sleep(self.args.warmup)
        results = []
        for name in self.args.scenarios.split(","):
            start = now()
            victim, end = self.inject(name)
            time.sleep(self.args.settle)
            results.append(self.measure(name, victim, start, end))
            if not self.wait_converged(60):
                print(f"warning: not converged 60 s after {name}", file=sys.stderr)
            time.sleep(2)
        return results

    def inject(self, name):
        a = self.args
        if name == "loss":
            v = 2
            self.lan.fault(v, f"numgen random mod 100 < {a.loss} drop")
            time.sleep(a.fault)
            self.lan.clear(v)
        elif name == "partition":
            v = 3
            self.lan.fault(v, "drop")
            time.sleep(a.fault)
            self.lan.clear(v)
        elif name in ("pause", "stop12"):
            v = 4
            r = self.relays[v]
            self.victim_node = self.views[r.name][-1][2]
            r.signal(signal.SIGSTOP)
            r.stopped = True
            time.sleep(a.pause if name == "pause" else 12)
            r.signal(signal.SIGCONT)
            r.stopped = False
        elif name == "restart":
            v = 1
            r = self.relays[v]
            r.kill()
            time.sleep(a.restart_after)
            r.start()
        else:
            raise SystemExit(f"unknown scenario {name}")
        return v, now()

    # -- measurement --
    def measure(self, name, v, start, end):
        victim = self.relays[v].name
        horizon = end + self.args.settle
        # Which process ran under each name, and when (the victim's restart changes it).
        held_during, dead_after = 0.0, 0.0
        agreement = 0.0
        first_dead = {}
        for obs in self.relays:
            samples = [s for s in self.views.get(obs.name, []) if start - 1 <= s[0] <= horizon]
            streak_start = None
            open_dead = {}
            for t, view, _ in samples:
                ids = self.ids_at(t)
                bad = False
                for other, node in ids.items():
                    if other == obs.name:
                        continue
                    entry = view.get(other)
                    ok = entry is not None and entry[0] == node and entry[1] == "alive"
                    if not ok:
                        bad = True
                    dead = entry is not None and entry[0] == node and entry[1] == "dead"
                    if dead and other == victim and other not in first_dead.get(obs.name, {}):
                        first_dead.setdefault(obs.name, {})[other] = t
                    if dead and self.running_at(other, t):
                        if other not in open_dead:
                            open_dead[other] = t
                        if t <= end and not (other == victim and name in ("partition",)):
                            held_during = max(held_during, t - open_dead[other])
                        if t > end:
                            dead_after = max(dead_after, t - end)
                    else:
                        open_dead.pop(other, None)
                if bad:
                    streak_start = None
                elif streak_start is None:
                    streak_start = t
            if streak_start is None:
                agreement = float("inf")
            else:
                agreement = max(agreement, max(0.0, streak_start - end))
        subs = {}
        for relay in (self.relays[1:] if self.args.peer != "serf" else []):
            recs = self.received.get(relay.name, [])
            window = [(t, q) for t, q in recs if start - 2 <= t <= horizon]
            published_after = next((q for t, q in self.published if t >= end), None)
            resume = None
            if published_after is not None:
                resume = next((t - end for t, q in window if q >= published_after), None)
            seqs = [q for _, q in window]
            dup = len(seqs) - len(set(seqs))
            ooo = sum(1 for x, y in zip(seqs, seqs[1:]) if y < x)
            lost = (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else None
            gap = max((y[0] - x[0] for x, y in zip(window, window[1:])), default=None)
            subs[relay.name] = {"resume_after": resume, "lost": lost, "duplicates": dup, "out_of_order": ooo, "max_gap": gap}
        result = {"peer": self.args.peer, "stats": dict(self.stats), "scenario": name, "victim": victim, "fault_s": round(end - start, 2),
                  "held_dead_during": round(held_during, 2), "dead_after_end": round(dead_after, 2),
                  "agreement_after": round(agreement, 2) if agreement != float("inf") else None,
                  "subscribers": subs}
        if name == "stop12":
            # The victim answers no poll while stopped: follow its node id from before the stop.
            node = self.victim_node
            dead_at, suspect_at = [], []
            for obs in self.relays:
                if obs.name == victim:
                    continue
                samples = [x for x in self.views.get(obs.name, []) if start <= x[0] <= end]
                d = next((t for t, view, _ in samples if view.get(victim, ("",))[0] == node and view[victim][1] == "dead"), None)
                q = next((t for t, view, _ in samples if view.get(victim, ("",))[0] == node and view[victim][1] in ("suspect", "dead")), None)
                dead_at.append(d)
                if q is not None:
                    suspect_at.append(q)
            result["dead_by_all"] = round(max(dead_at) - start, 2) if all(x is not None for x in dead_at) else None
            result["first_suspicion"] = round(min(suspect_at) - start, 2) if suspect_at else None
            if result["dead_by_all"] is not None and result["first_suspicion"] is not None:
                # A probe fails one probe interval (1 s on the LAN) after it starts.
                result["dead_by_all_after_first_missed_probe"] = round(result["dead_by_all"] - result["first_suspicion"] + 1.0, 2)
        return result

    def ids_at(self, t):
        """name -> node id each relay ran as around time t (its own latest self id before t)."""
        ids = {}
        for relay in self.relays:
            node = None
            for ts, _, me in self.views.get(relay.name, []):
                if ts > t:
                    break
                node = me
            if node and self.running_at(relay.name, t):
                ids[relay.name] = node
        return ids

    def running_at(self, name, t):
        """Was the relay `name` running at t (from the sample stream: it answered within 1 s)?"""
        for ts, _, _ in reversed(self.views.get(name, [])):
            if ts <= t + 0.5:
                return t - ts < 1.0
        return False

    def cleanup(self):
        self.stop_all = True
        for relay in self.relays:
            relay.signal(signal.SIGCONT)
            relay.kill()
        for i in range(5):
            self.lan.clear(i)
        self.lan.down()
        if self.key and os.path.exists(self.key):
            os.remove(self.key)


def table(results):
    lines = [f"{'scenario':10} {'fault':>6} {'held dead':>9} {'dead after':>10} {'agree after':>11}  subscribers resume after (s) [lost/dup/ooo]"]
    for r in results:
        subs = "  ".join(
            k + ":" + ("-" if s["resume_after"] is None else "%.2f" % s["resume_after"]) + f"[{s['lost']}/{s['duplicates']}/{s['out_of_order']}]"
            for k, s in r["subscribers"].items())
        agree = "never" if r["agreement_after"] is None else f"{r['agreement_after']:.2f}"
        extra = (f"  dead by all {r.get('dead_by_all')} s after SIGSTOP, first suspicion {r.get('first_suspicion')} s,"
                 f" {r.get('dead_by_all_after_first_missed_probe')} s after the first missed probe") if "dead_by_all" in r else ""
        lines.append(f"{r['scenario']:10} {r['fault_s']:>6} {r['held_dead_during']:>9} {r['dead_after_end']:>10} {agree:>11}  {subs}{extra}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skein", default=os.environ.get("SKEIN", ".build/debug/skein"))
    p.add_argument("--scenarios", default="loss,partition,pause,restart")
    p.add_argument("--profile", default="lan")
    p.add_argument("--fault", type=float, default=8.0, help="loss and partition length, s")
    p.add_argument("--loss", type=int, default=30, help="loss percent")
    p.add_argument("--pause", type=float, default=6.0)
    p.add_argument("--restart-after", type=float, default=5.0)
    p.add_argument("--settle", type=float, default=20.0, help="measured time after each fault ends, s")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--rate", type=float, default=500.0, help="events per second")
    p.add_argument("--poll", type=float, default=0.2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--peer", choices=["skein", "serf"], default="skein", help="what runs on the five hosts")
    p.add_argument("--serf", default="/usr/bin/serf")
    args = p.parse_args()
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        results = bench.run()
    finally:
        bench.cleanup()
        if os.environ.get("HEAL_LOGS"):
            with open(os.environ["HEAL_LOGS"], "w") as f:
                for r in bench.relays:
                    for t, line in r.log:
                        f.write(f"{t:9.3f} {r.name} {line}\n")
    if args.json:
        for r in results:
            print(json.dumps(r))
    print(table(results), file=sys.stderr if args.json else sys.stdout)


if __name__ == "__main__":
    main()
