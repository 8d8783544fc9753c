#!/usr/bin/env bash
# Server CPU time (user + system, all threads) per operation of one workload at 64
# connections: less sensitive to a noisy machine than throughput.
#
#   scripts/server-cpu-per-op.sh path/to/truce update
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=$1
WORKLOAD=${2:-update}
source scripts/lib.sh
CLIENT=$BIN
BIN=$SERVER
start_truce data
pid=$TRUCE_PID
addr=$TRUCE_ADDR
# Warm up, then measure.
"$CLIENT" bench --url "http://$addr" --workload "$WORKLOAD" --connections 64 --duration 1s --json > /dev/null
before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
ops=$("$CLIENT" bench --url "http://$addr" --workload "$WORKLOAD" --connections 64 --duration 4s --json |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["ops"])')
after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
ticks=$(getconf CLK_TCK)
python3 -c "print(f'$WORKLOAD: {$ops} ops, server CPU {($after - $before) / $ticks * 1e6 / $ops:.1f} us per op')"
