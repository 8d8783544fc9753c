#!/usr/bin/env bash
# Instructions the server executes per operation of one workload at 64 connections,
# counted by valgrind's callgrind: repeatable where timings on this noisy machine are
# not. The server runs about 50 times slower under callgrind, so compare builds
# with each other, not with timed runs; the profile is kept for callgrind_annotate.
# Counting starts once the server listens (start-up, about 54 million
# instructions, is left out) and ends when it has shut down.
#
#   scripts/server-instructions.sh path/to/truce create [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=$1
WORKLOAD=${2:-create}
SECONDS_UNDER_LOAD=${3:-10}
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind" >&2; exit 1; }
source scripts/lib.sh

profile="$work/callgrind.out"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$profile" \
    "$SERVER" serve --listen 127.0.0.1:0 --data "$work/data" > "$work/server.log" 2>&1 &
server=$!
addr=
for _ in $(seq 600); do
    addr=$(grep "listening on" "$work/server.log" 2>/dev/null | grep -o '127\.0\.0\.1:[0-9]*' | head -n 1 || true)
    [ -n "$addr" ] && break
    sleep 0.2
done
[ -n "$addr" ] || { echo "the server did not start under valgrind" >&2; cat "$work/server.log" >&2; exit 1; }
callgrind_control --instr=on "$server" >/dev/null
ops=$("$BIN" bench --url "http://$addr" --workload "$WORKLOAD" --connections 64 \
    --duration "${SECONDS_UNDER_LOAD}s" --json |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["ops"])')
kill -INT "$server"
wait "$server" || true
instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$profile")
kept="target/callgrind.$(basename "$SERVER").$WORKLOAD.out"
cp "$profile" "$kept"
python3 -c "print(f'$WORKLOAD: {$ops} ops, {$instructions} instructions, {$instructions / $ops:.0f} per op (profile: $kept)')"
