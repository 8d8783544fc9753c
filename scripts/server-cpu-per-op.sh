#!/usr/bin/env bash
# Server CPU time (user + system, all threads) per operation of one workload at 64
# connections: less sensitive to a noisy machine than throughput.
#
#   scripts/server-cpu-per-op.sh path/to/truce update
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1
WORKLOAD=${2:-update}
cargo build --release --quiet
CLIENT=target/release/truce
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$BIN" serve --listen 127.0.0.1:0 --data "$work/data" > "$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/log" 2>/dev/null && break; sleep 0.1; done
addr=$(grep -o '127\.0\.0\.1:[0-9]*' "$work/log" | head -n 1)
# Warm up, then measure.
"$CLIENT" bench --url "http://$addr" --workload "$WORKLOAD" --connections 64 --duration 1s --json > /dev/null
before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
ops=$("$CLIENT" bench --url "http://$addr" --workload "$WORKLOAD" --connections 64 --duration 4s --json |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["ops"])')
after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
ticks=$(getconf CLK_TCK)
python3 -c "print(f'$WORKLOAD: {$ops} ops, server CPU {($after - $before) / $ticks * 1e6 / $ops:.1f} us per op')"
