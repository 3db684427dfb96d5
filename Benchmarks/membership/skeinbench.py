#!/usr/bin/env python3
"""Skein relay membership benchmark on loopback, mirroring ../shared/peers/serf/serfbench.py.

Starts N `skein relay` processes bound to 127.0.0.1 (gossip + peer-link port BASE+i, admin
port ADMINBASE+i, client port picked by the OS), timestamps every stderr line on arrival
(monotonic clock), and runs the same scenarios as serfbench.py, emitting JSON lines of the
same shape ({"n","profile","encrypt": true,"rep","results":[...]} per rep, plus one line per
scenario on stdout):

  join   : all relays up with no seeds ("relay ready"), then every relay i>0 is told at the
           same moment (POST /join, parallel threads) to join relay 0; convergence = time
           until each relay has logged "relay joined" for all N-1 others.
  steady : CPU (utime+stime from /proc), RSS, and IP bytes/packets on the relays' gossip ports
           (nft counters: udp dport, tcp dport, tcp sport), after an optional warm-up.
  kill   : kill -9 one relay; time until every other logs "relay is dead" for it; first
           suspicion ("relay is suspect", any observer).
  leave  : SIGTERM one relay (it leaves gracefully); time until every other logs "relay is
           left"; observers that logged "relay is dead" instead.
  stop   : SIGSTOP one relay for each of --stop-pauses seconds, then SIGCONT; who marked it
           dead, first suspicion, time until all see it alive again after SIGCONT.
  starve : one relay in a cgroup-v1 cpu group with a small CFS quota for W seconds; state
           changes about the victim per observer, healthy relays declared dead.
  loss   : nft random drop of X% of UDP (and TCP with LOSS_TCP=1) on the gossip ports for W
           seconds; false deaths, suspicions.
  tags   : a raw relay-protocol client on relay SRC subscribes to topics totalling S bytes
           (the relay's advertised metadata grows by S); time until every other relay logs
           "relay metadata changed" for SRC at the new version.

Skein has no log line for refutations or for "Suspect X has failed" by the prober, so
suspicions raised and refutations come from the relays' GET /members (stats.suspicionsRaised
and the self record's incarnation) where serfbench counts log lines; "relay is suspect" lines
(logged by every relay that learns of a suspicion) are reported separately.

All traffic is 127.0.0.1. Relays, nft tables and cgroups are removed on exit.
"""
import argparse, json, os, re, selectors, signal, socket, statistics, subprocess
import sys, threading, time, random, http.client

HERE = os.path.dirname(os.path.abspath(__file__))
SKEIN = os.environ.get("SKEIN", os.path.join(HERE, "..", "..", ".build-release", "release", "skein"))
TAB = "skeinbench"
CG = "/sys/fs/cgroup/cpu/skeinbench"
CLK = os.sysconf("SC_CLK_TCK")

# StreamLogHandler: "<iso8601> <level> <label>: k=v k=v [SkeinRelay] message"
RE_MSG = re.compile(r"\] (relay joined|relay is (suspect|dead|alive|left)|relay metadata changed|relay ready)\s*$")
RE_NAME = re.compile(r"(?:^|\s)name=(\S+)")
RE_VERSION = re.compile(r"(?:^|\s)version=(\d+)")
RE_WAS = re.compile(r"(?:^|\s)was=(\S+)")
RE_CLIENT_PORT = re.compile(r"address=\[?(?:127\.0\.0\.1|::1)\]?:(\d+) .*\] listening for clients")
KIND = {"relay joined": "join", "relay is suspect": "suspect", "relay is dead": "failed",
        "relay is alive": "alive", "relay is left": "leave", "relay metadata changed": "update"}


def now():
    return time.monotonic()


def http_req(port, method, path, body=None, timeout=5):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {r.status} {data[:200]!r}")
        return data
    finally:
        c.close()


def members(port, timeout=5):
    return json.loads(http_req(port, "GET", "/members", timeout=timeout))


class Cluster:
    def __init__(self, n, profile, keyfile, base, adminbase, logdir):
        self.n, self.profile, self.keyfile = n, profile, keyfile
        self.base, self.adminbase = base, adminbase
        self.names = [f"n{i:02d}" for i in range(n)]
        self.procs = [None] * n
        self.client_ports = [None] * n
        self.events = []  # (t, observer_idx, kind, subject, extra)
        self.lock = threading.Lock()
        self.sel = selectors.DefaultSelector()
        self.bufs = {}
        self.running = set()
        self.stop_reader = False
        self.logf = [open(os.path.join(logdir, f"{nm}.log"), "w") for nm in self.names]

    def start(self, timeout=90):
        for i in range(self.n):
            cmd = [SKEIN, "relay", "--key-file", self.keyfile, "--client-port", "0",
                   "--client-host", "127.0.0.1",
                   "--admin-port", str(self.adminbase + i), "--bind", f"127.0.0.1:{self.base + i}",
                   "--name", self.names[i], "--gossip-profile", self.profile, "--log-level", "info"]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
            os.set_blocking(p.stderr.fileno(), False)
            self.procs[i] = p
            self.bufs[p.stderr.fileno()] = b""
            self.sel.register(p.stderr, selectors.EVENT_READ, i)
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()
        t0 = now()
        while len(self.running) < self.n:
            if now() - t0 > timeout:
                raise RuntimeError(f"only {len(self.running)}/{self.n} relays ready")
            dead = [i for i, p in enumerate(self.procs) if p.poll() is not None]
            if dead:
                raise RuntimeError(f"relays exited at start: {[self.names[i] for i in dead]}")
            time.sleep(0.05)
        for i in range(self.n):  # the admin endpoint must answer too
            for _ in range(100):
                try:
                    members(self.adminbase + i, timeout=2)
                    break
                except Exception:
                    time.sleep(0.05)
        return now() - t0

    def _read_loop(self):
        while not self.stop_reader:
            for key, _ in self.sel.select(timeout=0.1):
                t = now()
                i = key.data
                fd = key.fileobj.fileno()
                try:
                    d = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    d = b""
                if not d:
                    try:
                        self.sel.unregister(key.fileobj)
                    except Exception:
                        pass
                    continue
                buf = self.bufs[fd] + d
                *lines, rest = buf.split(b"\n")
                self.bufs[fd] = rest
                for raw in lines:
                    line = raw.decode(errors="replace")
                    self.logf[i].write(f"{t:.4f} {line}\n")
                    self._parse(t, i, line)

    def _parse(self, t, i, line):
        m = RE_MSG.search(line)
        if not m:
            if self.client_ports[i] is None and "listening for clients" in line:
                pm = RE_CLIENT_PORT.search(line)
                if pm:
                    self.client_ports[i] = int(pm.group(1))
            return
        msg = m.group(1)
        if msg == "relay ready":
            self.running.add(i)
            return
        kind = KIND[msg]
        nm = RE_NAME.search(line)
        extra = None
        if kind == "update":
            v = RE_VERSION.search(line)
            extra = int(v.group(1)) if v else None
        elif kind in ("suspect", "failed", "alive", "leave"):
            w = RE_WAS.search(line)
            extra = w.group(1) if w else None
        with self.lock:
            self.events.append((t, i, kind, nm.group(1) if nm else None, extra))

    def ev(self, kind, subject=None, since=0.0, observers=None):
        with self.lock:
            return [e for e in self.events if (kind is None or e[2] == kind) and e[0] >= since
                    and (subject is None or e[3] == subject)
                    and (observers is None or e[1] in observers)]

    def pid(self, i):
        return self.procs[i].pid

    def alive_idx(self):
        return [i for i, p in enumerate(self.procs) if p and p.poll() is None]

    def stats_sum(self, idx, key):
        tot = 0
        for i in idx:
            try:
                tot += members(self.adminbase + i, timeout=3)["stats"].get(key, 0)
            except Exception:
                pass
        return tot

    def self_incarnation(self, i):
        try:
            m = members(self.adminbase + i, timeout=3)
            return next(x["incarnation"] for x in m["members"] if x.get("self"))
        except Exception:
            return None

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            if p:
                try:
                    p.wait(timeout=10)
                except Exception:
                    pass
        self.stop_reader = True
        time.sleep(0.2)
        for f in self.logf:
            f.close()


# ---------- helpers (as serfbench) ----------

def nft(*args, check=True):
    return subprocess.run(["nft", *args], capture_output=True, text=True, check=check)


def nft_counters_setup(ports):
    nft("delete", "table", "inet", TAB, check=False)
    rules = [f"table inet {TAB} {{", " chain inp {", "  type filter hook input priority -10;"]
    for p in ports:
        rules.append(f"  udp dport {p} counter")
        rules.append(f"  tcp dport {p} counter")
        rules.append(f"  tcp sport {p} counter")  # replies go to ephemeral ports
    rules += [" }", "}"]
    subprocess.run(["nft", "-f", "-"], input="\n".join(rules), text=True, check=True)


def nft_counters_read():
    out = json.loads(nft("-j", "list", "table", "inet", TAB).stdout)
    udp = tcp = pk_u = pk_t = 0
    for item in out["nftables"]:
        r = item.get("rule")
        if not r:
            continue
        proto = None
        cnt = None
        for e in r["expr"]:
            if "match" in e:
                left = e["match"]["left"]
                if "payload" in left:
                    proto = left["payload"]["protocol"]
            if "counter" in e:
                cnt = e["counter"]
        if cnt and proto == "udp":
            udp += cnt["bytes"]; pk_u += cnt["packets"]
        elif cnt and proto == "tcp":
            tcp += cnt["bytes"]; pk_t += cnt["packets"]
    return udp, tcp, pk_u, pk_t


def nft_teardown():
    nft("delete", "table", "inet", TAB, check=False)
    nft("delete", "table", "inet", TAB + "_loss", check=False)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stats(xs):
    xs = sorted(xs)
    if not xs:
        return None
    return {"min": round(xs[0], 3), "median": round(statistics.median(xs), 3),
            "max": round(xs[-1], 3), "n": len(xs)}


def wait_until(pred, timeout, step=0.05):
    t0 = now()
    while now() - t0 < timeout:
        if pred():
            return True
        time.sleep(step)
    return pred()


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# ---------- relay protocol (raw client, for metadata growth) ----------

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


def pstr(s):
    b = s.encode()
    return varint(len(b)) + b


class RawClient:
    def __init__(self, port, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.settimeout(timeout)
        self.s.sendall(b"\x00" + pstr("iris-client-magic") + pstr("v1.0-draft2") + pstr(""))
        want = b"\x00" + pstr("iris-relay-magic") + pstr("v1.0-draft2")
        got = b""
        while len(got) < len(want):
            d = self.s.recv(len(want) - len(got))
            if not d:
                raise EOFError(f"relay closed during INIT after {got!r}")
            got += d
        if got != want:
            raise RuntimeError(f"unexpected INIT reply {got!r}")

    def subscribe(self, topics):
        self.s.sendall(b"".join(b"\x06" + pstr(t) for t in topics))

    def close(self):
        try:
            self.s.close()
        except Exception:
            pass


def topics_of_size(size, tag, chunk=1000):
    """Distinct topics whose lengths sum to exactly `size` bytes (each ≤ chunk ≤ 1024)."""
    out, left, k = [], size, 0
    while left > 0:
        ln = min(chunk, left)
        if 0 < left - ln < 12:  # keep the last one long enough for its unique prefix
            ln = left - 12
        head = f"{tag}-{k:03d}-"
        out.append((head + "x" * ln)[:ln] if ln >= len(head) else head[:ln])
        left -= ln
        k += 1
    assert sum(len(t) for t in out) == size and len(set(out)) == len(out)
    return out


# ---------- scenarios ----------

def sc_join(c, timeout):
    t0 = now()
    errs = []

    def j(i):
        try:
            http_req(c.adminbase + i, "POST", "/join", body=f"127.0.0.1:{c.base}", timeout=10)
        except Exception as e:
            errs.append(str(e))
    ths = [threading.Thread(target=j, args=(i,)) for i in range(1, c.n)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    t_rpc = now() - t0

    def converged_time(i):
        need = set(c.names) - {c.names[i]}
        seen = {}
        for e in c.ev("join", since=t0, observers={i}):
            if e[3] in need and e[3] not in seen:
                seen[e[3]] = e[0]
        if len(seen) == len(need):
            return max(seen.values()) - t0
        return None
    ok = wait_until(lambda: all(converged_time(i) is not None for i in range(c.n)), timeout, 0.1)
    per = [converged_time(i) for i in range(c.n)]
    done = [x for x in per if x is not None]
    return {"scenario": "join", "converged": ok, "rpc_join_s": round(t_rpc, 3),
            "all_converged_s": round(max(done), 3) if ok else None,
            "per_agent": stats(done), "errors": errs[:3],
            "false_failed_events": len(c.ev("failed", since=t0))}


def sc_steady(c, window, warmup=0.0):
    time.sleep(warmup)
    idx = c.alive_idx()
    ports = [c.base + i for i in idx]
    nft_counters_setup(ports)
    cpu0 = {i: cpu_ticks(c.pid(i)) for i in idx}
    t0 = now()
    time.sleep(window)
    dt = now() - t0
    cpu1 = {i: cpu_ticks(c.pid(i)) for i in idx}
    udp, tcp, pu, pt = nft_counters_read()
    nft("delete", "table", "inet", TAB, check=False)
    cpu_pct = [100.0 * (cpu1[i] - cpu0[i]) / CLK / dt for i in idx]
    n = len(idx)
    return {"scenario": "steady", "window_s": round(dt, 1), "warmup_s": warmup, "agents": n,
            "cpu_pct_per_agent": stats(cpu_pct),
            "cpu_pct_total": round(sum(cpu_pct), 2),
            "udp_bytes_per_agent_s": round(udp / n / dt, 1),
            "tcp_bytes_per_agent_s": round(tcp / n / dt, 1),
            "udp_pkts_per_agent_s": round(pu / n / dt, 2),
            "tcp_pkts_per_agent_s": round(pt / n / dt, 2),
            "rss_kb": stats([rss_kb(c.pid(i)) for i in idx]),
            "false_failed_events": len(c.ev("failed", since=t0)),
            "suspect_lines": len(c.ev("suspect", since=t0))}


def detection(c, kind, victim, t0, observers, timeout, alt_kind=None):
    name = c.names[victim]

    def times():
        d = {}
        for e in c.ev(kind, subject=name, since=t0, observers=set(observers)):
            d.setdefault(e[1], e[0] - t0)
        return d

    def settled():
        if len(times()) == len(observers):
            return True
        if alt_kind:
            got = set(times()) | {e[1] for e in c.ev(alt_kind, subject=name, since=t0,
                                                       observers=set(observers))}
            return len(got) == len(observers)
        return False
    wait_until(settled, timeout, 0.05)
    d = times()
    ok = len(d) == len(observers)
    sus = c.ev("suspect", subject=name, since=t0)
    return {"all_seen": ok, "seen_by": len(d), "observers": len(observers),
            "first_s": round(min(d.values()), 3) if d else None,
            "median_s": round(statistics.median(d.values()), 3) if d else None,
            "last_s": round(max(d.values()), 3) if d else None,
            "first_suspect_s": round(sus[0][0] - t0, 3) if sus else None,
            "suspected_by": len({e[1] for e in sus})}


def sc_kill(c, timeout, rng):
    idx = c.alive_idx()
    victim = rng.choice([i for i in idx if i != 0])
    obs = [i for i in idx if i != victim]
    t0 = now()
    os.kill(c.pid(victim), signal.SIGKILL)
    c.procs[victim].wait()
    r = detection(c, "failed", victim, t0, obs, timeout)
    others = [e for e in c.ev("failed", since=t0) if e[3] != c.names[victim]]
    r.update({"scenario": "kill", "victim": c.names[victim],
              "collateral_false_failed": len(others)})
    if r["first_suspect_s"] is not None and r["first_s"] is not None:
        # suspicion -> first death (the suspicion timeout) and first -> last death (dissemination)
        r["suspect_to_first_dead_s"] = round(r["first_s"] - r["first_suspect_s"], 3)
        r["first_to_last_dead_s"] = round(r["last_s"] - r["first_s"], 3)
    return r


def sc_leave(c, timeout, rng):
    idx = c.alive_idx()
    victim = rng.choice([i for i in idx if i != 0])
    obs = [i for i in idx if i != victim]
    t0 = now()
    os.kill(c.pid(victim), signal.SIGTERM)
    r = detection(c, "leave", victim, t0, obs, timeout, alt_kind="failed")
    t_exit = None
    try:
        c.procs[victim].wait(timeout=15)
        t_exit = now() - t0
    except Exception:
        pass
    r.update({"scenario": "leave", "victim": c.names[victim],
              "failed_instead": len(c.ev("failed", subject=c.names[victim], since=t0)),
              "victim_exit_s": round(t_exit, 3) if t_exit else None,
              "victim_exit_code": c.procs[victim].poll()})
    return r


def sc_tags(c, size, timeout, rng, settle=3.0):
    """Grow relay SRC's advertised topics by `size` bytes; time until all others see it."""
    idx = c.alive_idx()
    src = rng.choice(idx)
    name = c.names[src]
    obs = [i for i in idx if i != src]
    port = c.client_ports[src]
    if port is None:
        return {"scenario": "tags", "size": size, "error": "client port of source not logged"}
    try:
        cl = RawClient(port)
    except Exception as e:
        return {"scenario": "tags", "size": size, "error": f"connect: {e}"[:200]}
    try:
        time.sleep(settle)  # the new connection changes `load`: let that version spread first
        before = next(x for x in members(c.adminbase + src)["members"] if x.get("self"))
        v0 = before["metadataVersion"]
        n_topics0 = len(before.get("topics") or [])
        topics = topics_of_size(size, f"s{size}r{rng.randrange(10**6)}")
        t0 = now()
        cl.subscribe(topics)
        # the version at which all topics are advertised (the relay coalesces every 50 ms)
        vfinal = None
        t_lim = now() + 10
        while now() < t_lim:
            me = next(x for x in members(c.adminbase + src)["members"] if x.get("self"))
            if len(me.get("topics") or []) >= n_topics0 + len(topics):
                vfinal = me["metadataVersion"]
                break
            time.sleep(0.02)
        if vfinal is None:
            return {"scenario": "tags", "size": size, "source": name,
                    "error": "source never advertised all topics (metadata limit?)",
                    "topics": len(topics)}

        def times():
            d = {}
            for e in c.ev("update", subject=name, since=t0, observers=set(obs)):
                if e[4] is not None and e[4] >= vfinal:
                    d.setdefault(e[1], e[0] - t0)
            return d
        ok = wait_until(lambda: len(times()) == len(obs), timeout, 0.05)
        d = times()
        r = {"scenario": "tags", "size": size, "source": name, "topics": len(topics),
             "version_before": v0, "version": vfinal,
             "all_seen": ok, "seen_by": len(d), "observers": len(obs),
             "first_s": round(min(d.values()), 3) if d else None,
             "median_s": round(statistics.median(d.values()), 3) if d else None,
             "last_s": round(max(d.values()), 3) if d else None}
        return r
    finally:
        cl.close()


def status_changes(c, name, t0, observers, until=None):
    per = {i: 0 for i in observers}
    for e in c.ev(None, subject=name, since=t0, observers=set(observers)):
        if e[2] in ("suspect", "failed", "alive", "leave") and (until is None or e[0] < until):
            per[e[1]] += 1
    return per


def sc_stop(c, pause, rng, settle):
    idx = c.alive_idx()
    victim = rng.choice([i for i in idx if i != 0])
    name = c.names[victim]
    obs = [i for i in idx if i != victim]
    inc0 = c.self_incarnation(victim)
    t0 = now()
    os.kill(c.pid(victim), signal.SIGSTOP)
    time.sleep(pause)
    t_cont = now()
    os.kill(c.pid(victim), signal.SIGCONT)
    time.sleep(settle)
    failed = c.ev("failed", subject=name, since=t0)
    failed_obs = {e[1] for e in failed}
    # not alive at SIGCONT (suspect or dead) -> first "relay is alive" after SIGCONT, per observer
    state = {}
    for e in c.ev(None, subject=name, since=t0, observers=set(obs)):
        if e[0] <= t_cont and e[2] in ("suspect", "failed", "alive"):
            state[e[1]] = e[2]
    down_at_cont = {i for i, s in state.items() if s != "alive"}
    back = {}
    for e in c.ev("alive", subject=name, since=t_cont):
        back.setdefault(e[1], e[0] - t_cont)
    rejoin = {i: back[i] for i in failed_obs if i in back}
    cleared = {i: back[i] for i in down_at_cont if i in back}
    sus = c.ev("suspect", subject=name, since=t0)
    others = [e for e in c.ev("failed", since=t0) if e[3] != name]
    inc1 = c.self_incarnation(victim)
    per = status_changes(c, name, t0, obs)
    return {"scenario": "stop", "pause_s": pause, "victim": name,
            "suspected": len(sus) > 0,
            "first_suspect_s": round(sus[0][0] - t0, 3) if sus else None,
            "marked_failed_by": len(failed_obs), "observers": len(obs),
            "first_failed_s": round(min(e[0] for e in failed) - t0, 3) if failed else None,
            "all_failed_s": round(max(e[0] for e in failed) - t0, 3)
            if failed and len(failed_obs) == len(obs) else None,
            "rejoined_by": len(rejoin),
            "all_alive_again_after_cont_s": round(max(rejoin.values()), 3)
            if rejoin and len(rejoin) == len(failed_obs) else None,
            "not_alive_at_cont": len(down_at_cont),
            "all_clear_after_cont_s": round(max(cleared.values()), 3)
            if cleared and len(cleared) == len(down_at_cont) else None,
            "victim_refutes": (inc1 - inc0) if inc0 is not None and inc1 is not None else None,
            "max_state_changes_per_observer": max(per.values()) if per else 0,
            "collateral_false_failed": len(others)}


def sc_starve(c, quota_pct, window, rng, settle):
    idx = c.alive_idx()
    victim = rng.choice([i for i in idx if i != 0])
    name = c.names[victim]
    obs = [i for i in idx if i != victim]
    os.makedirs(CG, exist_ok=True)
    period = int(os.environ.get("STARVE_PERIOD_US", "100000"))
    with open(f"{CG}/cpu.cfs_quota_us", "w") as f:
        f.write("-1")
    with open(f"{CG}/cpu.cfs_period_us", "w") as f:
        f.write(str(period))
    with open(f"{CG}/cpu.cfs_quota_us", "w") as f:
        f.write(str(max(1000, int(period * quota_pct / 100))))
    raised0 = {i: c.stats_sum([i], "suspicionsRaised") for i in idx}
    stalls0 = c.stats_sum([victim], "stalls")
    withheld0 = c.stats_sum([victim], "accusationsWithheld")
    inc0 = c.self_incarnation(victim)
    t0 = now()
    for tid in os.listdir(f"/proc/{c.pid(victim)}/task"):
        try:
            with open(f"{CG}/tasks", "w") as f:
                f.write(tid)
        except OSError:
            pass
    time.sleep(window)
    for tid in os.listdir(f"/proc/{c.pid(victim)}/task"):
        try:
            with open("/sys/fs/cgroup/cpu/tasks", "w") as f:
                f.write(tid)
        except OSError:
            pass
    t1 = now()

    def down_at_end():
        # observers whose latest word on the victim is suspect or dead
        out = set()
        for i in obs:
            evs = [e for e in c.ev(None, subject=name, since=t0, observers={i})
                   if e[2] in ("suspect", "failed", "alive")]
            if evs and evs[-1][2] != "alive":
                out.add(i)
        return out
    # A starved relay that was declared dead comes back once it has run a while unstarved
    # (Skein: 10 s without a stall): wait for that (at most 30 s) and time it.
    wait_until(lambda: not down_at_end(), 30)
    still_down = down_at_end()
    back = [e[0] for e in c.ev("alive", subject=name, since=t1, observers=set(obs))]
    time.sleep(settle)
    fail = c.ev("failed", since=t0)
    raised1 = {i: c.stats_sum([i], "suspicionsRaised") for i in idx}
    stalls1 = c.stats_sum([victim], "stalls")
    withheld1 = c.stats_sum([victim], "accusationsWithheld")
    with open(f"{CG}/cpu.stat") as f:
        cst = dict(l.split() for l in f.read().splitlines())
    per = status_changes(c, name, t0, obs, until=t1)
    inc1 = c.self_incarnation(victim)
    return {"scenario": "starve", "quota_pct": quota_pct, "period_us": period, "window_s": window,
            "nr_throttled": int(cst.get("nr_throttled", 0)),
            "throttled_s": round(int(cst.get("throttled_time", 0)) / 1e9, 1),
            "victim": name,
            "suspicions_about_victim": len(c.ev("suspect", subject=name, since=t0)),
            "suspicions_raised_by_victim": raised1[victim] - raised0[victim],
            "suspicions_raised_by_others": sum(raised1[i] - raised0[i] for i in obs),
            "failed_events_about_victim": len([e for e in fail if e[3] == name]),
            "failed_events_about_healthy": len([e for e in fail if e[3] != name]),
            "distinct_healthy_declared_failed": len({e[3] for e in fail if e[3] != name}),
            "victim_state_changes_max_per_observer": max(per.values()) if per else 0,
            "victim_state_changes_median_per_observer": statistics.median(per.values()) if per else 0,
            "victim_refutes": (inc1 - inc0) if inc0 is not None and inc1 is not None else None,
            "victim_stalls": stalls1 - stalls0, "victim_accusations_withheld": withheld1 - withheld0,
            "alive_everywhere_after_starvation_s": round(max(back) - t1, 3) if back and not still_down else
            (0.0 if not still_down else None)}


def sc_loss(c, pct, window, settle):
    idx = c.alive_idx()
    nft("delete", "table", "inet", TAB + "_loss", check=False)
    tcp = bool(os.environ.get("LOSS_TCP"))
    rules = [f"table inet {TAB}_loss {{", " chain inp {",
             "  type filter hook input priority -20;",
             f"  iif lo udp dport {c.base}-{c.base + c.n - 1} numgen random mod 1000 < {int(pct * 10)} counter drop",
             *([f"  iif lo tcp dport {c.base}-{c.base + c.n - 1} numgen random mod 1000 < {int(pct * 10)} counter drop",
                f"  iif lo tcp sport {c.base}-{c.base + c.n - 1} numgen random mod 1000 < {int(pct * 10)} counter drop"]
               if tcp else []),
             " }", "}"]
    raised0 = c.stats_sum(idx, "suspicionsRaised")
    incs0 = {i: c.self_incarnation(i) for i in idx}
    subprocess.run(["nft", "-f", "-"], input="\n".join(rules), text=True, check=True)
    t0 = now()
    dropped = None
    try:
        time.sleep(window)
        out = nft("-j", "list", "table", "inet", TAB + "_loss").stdout
        dropped = sum(e["counter"]["packets"] for it in json.loads(out)["nftables"] if "rule" in it
                      for e in it["rule"]["expr"] if "counter" in e)
    finally:
        nft("delete", "table", "inet", TAB + "_loss", check=False)
    time.sleep(settle)
    fail = c.ev("failed", since=t0)
    incs1 = {i: c.self_incarnation(i) for i in idx}
    refutes = sum(incs1[i] - incs0[i] for i in idx if incs0[i] is not None and incs1[i] is not None)
    return {"scenario": "loss", "udp_loss_pct": pct, "tcp_too": tcp,
            "pkts_dropped": dropped, "window_s": window,
            "suspicions": c.stats_sum(idx, "suspicionsRaised") - raised0,
            "suspect_lines": len(c.ev("suspect", since=t0)),
            "failed_events": len(fail),
            "distinct_declared_failed": len({e[3] for e in fail}),
            "refutes": refutes}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--profile", default="lan", choices=["lan", "fast"])
    ap.add_argument("--encrypt", action="store_true", help="accepted for symmetry; always on")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scenarios", default="join,kill,leave")
    ap.add_argument("--steady-window", type=float, default=30)
    ap.add_argument("--steady-warmup", type=float, default=0)
    ap.add_argument("--settle", type=float, default=5)
    ap.add_argument("--stop-pauses", default="1,2,5,12")
    ap.add_argument("--starve-quota", type=float, default=2.0, help="percent of one CPU")
    ap.add_argument("--starve-window", type=float, default=60)
    ap.add_argument("--loss-pct", type=float, default=10)
    ap.add_argument("--loss-window", type=float, default=60)
    ap.add_argument("--tag-sizes", default="16,600,4096,65000")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--base", type=int, default=24000)
    ap.add_argument("--adminbase", type=int, default=25000)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "skein.jsonl"))
    ap.add_argument("--logdir", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-runtime", type=float, default=3000, help="hard wall-clock cap (s)")
    a = ap.parse_args()

    if not os.access(SKEIN, os.X_OK):
        raise SystemExit(f"no skein binary at {SKEIN} (swift build -c release --product skein "
                         "--scratch-path .build-release, or set SKEIN=)")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    keyfile = os.path.join(os.path.dirname(os.path.abspath(a.out)), "skeinbench.key")
    if not os.path.exists(keyfile):
        subprocess.run([SKEIN, "keygen", "--output", keyfile], check=True,
                       stdout=subprocess.DEVNULL)
    os.chmod(keyfile, 0o600)
    rng = random.Random(a.seed)
    scen = a.scenarios.split(",")
    deadline = now() + a.max_runtime

    def alarm(*_):
        raise TimeoutError("max runtime reached")
    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(a.max_runtime))

    def term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, term)

    for rep in range(a.reps):
        if now() > deadline:
            break
        logdir = a.logdir or os.path.join(os.path.dirname(os.path.abspath(a.out)), "logs",
                                          f"skein-{a.profile}-n{a.n}-r{rep}-{int(time.time())}")
        os.makedirs(logdir, exist_ok=True)
        c = Cluster(a.n, a.profile, keyfile, a.base, a.adminbase, logdir)
        rec = {"system": "skein", "n": a.n, "profile": a.profile, "encrypt": True, "rep": rep,
               "loadavg_start": loadavg(), "results": []}
        interrupted = False
        try:
            rec["startup_s"] = round(c.start(), 3)
            for s in scen:
                if s == "join":
                    r = sc_join(c, a.timeout)
                    time.sleep(a.settle)
                elif s == "steady":
                    r = sc_steady(c, a.steady_window, a.steady_warmup)
                elif s == "kill":
                    r = sc_kill(c, a.timeout, rng)
                    time.sleep(a.settle)
                elif s == "leave":
                    r = sc_leave(c, a.timeout, rng)
                    time.sleep(a.settle)
                elif s == "tags":
                    r = []
                    for sz in [int(x) for x in a.tag_sizes.split(",")]:
                        r.append(sc_tags(c, sz, 30, rng)); time.sleep(2)
                elif s == "stop":
                    r = [sc_stop(c, float(p), rng, max(a.settle, 35)) for p in a.stop_pauses.split(",")]
                elif s == "starve":
                    r = sc_starve(c, a.starve_quota, a.starve_window, rng, a.settle)
                elif s == "loss":
                    r = sc_loss(c, a.loss_pct, a.loss_window, a.settle)
                else:
                    raise SystemExit(f"unknown scenario {s}")
                for x in (r if isinstance(r, list) else [r]):
                    rec["results"].append(x)
                    print(json.dumps({"rep": rep, "n": a.n, "profile": a.profile,
                                      "enc": True, **x}), flush=True)
        except KeyboardInterrupt:
            rec["error"] = "interrupted"
            interrupted = True
        except Exception as e:
            rec["error"] = repr(e)
            print("ERROR", repr(e), flush=True)
        finally:
            c.stop()
            nft_teardown()
            if os.path.isdir(CG):
                try:
                    os.rmdir(CG)
                except OSError:
                    pass
        rec["loadavg_end"] = loadavg()
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if interrupted:
            break
        time.sleep(1)
    signal.alarm(0)


if __name__ == "__main__":
    main()
