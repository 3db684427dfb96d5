#!/usr/bin/env bash
# Builds the examples and runs each once, end to end, against a throwaway dev relay.
# Usage: Examples/smoke-test.sh [path/to/skein]     (from the top of the repository)
# Exits non-zero, with the programs' output, if any example misbehaves.
set -euo pipefail
cd "$(dirname "$0")/.."
skein=${1:-.build/debug/skein}
[ -x "$skein" ] || { echo "smoke-test: $skein not found; run: swift build --product skein" >&2; exit 1; }
swift build --package-path Examples >/dev/null
bin=Examples/.build/debug

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    exec 7>&- 8>&- 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "smoke-test: FAILED: $*" >&2; tail -n +1 "$work"/*.err "$work"/*.out 2>/dev/null >&2 || true; exit 1; }
wait_for() { # FILE TEXT: until FILE contains TEXT (10 s at most)
    for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    fail "waiting for '$2' in $1"
}

"$skein" relay --dev --client-port 0 2>"$work/relay.err" & pids+=($!)
wait_for "$work/relay.err" "relay ready"
export SKEIN_RELAY=$(grep -o 'address=127\.0\.0\.1:[0-9]*' "$work/relay.err" | head -1 | cut -d= -f2)

# Request/reply.
"$bin/echo-service" 2>"$work/echo-service.err" & service=$!; pids+=($service)
wait_for "$work/echo-service.err" "serving"
[ "$("$bin/echo-client" hello mesh 2>/dev/null)" = $'hello\nmesh' ] || fail "echo-client did not get its echoes"
kill -INT "$service"; wait "$service" || fail "echo-service did not leave gracefully on SIGINT"
echo "echo-service/echo-client: ok"

# Publish/subscribe: two participants, each sees the other's line.
mkfifo "$work/alice.in" "$work/bob.in"
"$bin/chat" lobby alice <"$work/alice.in" >"$work/alice.out" 2>"$work/alice.err" & alice=$!; pids+=($alice)
exec 7>"$work/alice.in"
"$bin/chat" lobby bob <"$work/bob.in" >"$work/bob.out" 2>"$work/bob.err" 7>&- & bob=$!; pids+=($bob)
exec 8>"$work/bob.in"
wait_for "$work/alice.err" "in room"; wait_for "$work/bob.err" "in room"
echo "hi bob" >&7
wait_for "$work/bob.out" "alice: hi bob"
echo "hi alice" >&8
wait_for "$work/alice.out" "bob: hi alice"
exec 7>&-; wait "$alice" || fail "chat (alice) did not exit 0 at end of input"
wait_for "$work/bob.out" "\* alice left"
exec 8>&-; wait "$bob" || fail "chat (bob) did not exit 0 at end of input"
grep -q "alice: hi bob" "$work/alice.out" && fail "chat printed its own line"
echo "chat: ok"

# A file through a tunnel.
"$bin/receive-file" "$work/inbox" 2>"$work/receive-file.err" & receiver=$!; pids+=($receiver)
wait_for "$work/receive-file.err" "saving"
head -c $((20 << 20)) /dev/urandom >"$work/payload.bin"
"$bin/send-file" "$work/payload.bin" 2>"$work/send-file.err" || fail "send-file"
wait_for "$work/receive-file.err" "received payload.bin"
cmp -s "$work/payload.bin" "$work/inbox/payload.bin" || fail "the received file differs"
kill -INT "$receiver"; wait "$receiver" || fail "receive-file did not stop gracefully on SIGINT"
echo "send-file/receive-file: ok"
