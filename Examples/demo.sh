#!/usr/bin/env bash
# Starts a dev relay on a spare port and shows every pattern through the CLI.
# Usage: Examples/demo.sh [path/to/skein]
set -euo pipefail
skein=${1:-skein}
port=${SKEIN_DEMO_PORT:-56555}
relay="--relay 127.0.0.1:$port"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -s "$work/slow.pid" ]; then kill "$(cat "$work/slow.pid")" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # wait_for FILE TEXT: until FILE contains TEXT (10 s at most)
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "demo: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "skein relay --dev (port $port)"
"$skein" relay --dev --client-port "$port" 2>"$work/relay.log" & pids+=($!)
wait_for "$work/relay.log" "relay ready"
echo "relay ready"

step "serve: two members of cluster 'echo' (one echoes, one shouts)"
"$skein" serve echo --echo --print-broadcasts $relay >"$work/m1.out" 2>"$work/m1.err" & pids+=($!)
"$skein" serve echo $relay --print-broadcasts -- tr a-z A-Z >"$work/m2.out" 2>"$work/m2.err" & pids+=($!)
wait_for "$work/m1.err" ready; wait_for "$work/m2.err" ready

step "request/reply: balanced across the members"
for i in 1 2 3 4; do
    # $(…) is not a terminal: the reply comes byte-exact, with no newline of skein's own.
    printf 'skein request echo "hello %s" -> %s\n' "$i" "$("$skein" request echo "hello $i" $relay)"
done

step "a fault from a member (exit 1), a timeout (exit 3), and a cluster with no members (exit 6)"
"$skein" serve faulty $relay -- sh -c 'echo "disk full" >&2; exit 2' >/dev/null 2>"$work/m3.err" & pids+=($!)
# A member slower than the request's timeout: the relay gives up after 300 ms. Its command
# writes its pid first, so cleanup can stop it even if it outlives its `skein serve`.
"$skein" serve slow $relay -- sh -c 'echo $$ >"$0"; exec sleep 3' "$work/slow.pid" >/dev/null 2>"$work/m5.err" & pids+=($!)
wait_for "$work/m3.err" ready; wait_for "$work/m5.err" ready
"$skein" request faulty x $relay || echo "(exit $?)"
"$skein" request slow x --timeout 300 $relay || echo "(exit $?)"
"$skein" request nobody x $relay || echo "(exit $?)"

step "broadcast: every member prints it"
"$skein" broadcast echo "attention, members" $relay
for _ in $(seq 50); do [ -s "$work/m1.out" ] && [ -s "$work/m2.out" ] && break; sleep 0.1; done
echo "member 1 got: $(cat "$work/m1.out")"; echo "member 2 got: $(cat "$work/m2.out")"

step "publish/subscribe"
"$skein" subscribe news --count 3 $relay >"$work/sub.out" 2>"$work/sub.err" & sub=$!; pids+=($sub)
wait_for "$work/sub.err" ready
for headline in "skein ships" "relays gossip" "tunnels flow"; do "$skein" publish news "$headline" $relay; done
wait "$sub" || true
sed 's/^/subscriber got: /' "$work/sub.out"

step "tunnel: 4 MiB of random bytes through an echo member of cluster 'mirror' and back"
"$skein" serve mirror --echo $relay >/dev/null 2>"$work/m4.err" & pids+=($!)
wait_for "$work/m4.err" ready
head -c $((4 << 20)) /dev/urandom >"$work/in.bin"
"$skein" tunnel mirror --linger 500 $relay <"$work/in.bin" >"$work/out.bin"
if cmp -s "$work/in.bin" "$work/out.bin"; then echo "tunnel round trip: 4 MiB identical"; else echo "tunnel round trip differs" >&2; exit 1; fi

step "graceful stop"
kill -TERM "${pids[0]}"; wait "${pids[0]}" && echo "relay exited 0"
