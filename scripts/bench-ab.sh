#!/usr/bin/env bash
# Compares two truce builds on this machine: alternating runs, each against a fresh
# server and data dir, 64 connections, printing every run and the medians.
#
#   scripts/bench-ab.sh path/to/truce-before path/to/truce-after [ROUNDS] [WORKLOADS]
#
# The load generator is the current build's `truce bench`, the same for both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
ROUNDS=${3:-3}
WORKLOADS=${4:-update,read}
DURATION=${DURATION:-4s}
source scripts/lib.sh
CLIENT=$BIN

for round in $(seq "$ROUNDS"); do
    for side in A B; do
        if [ "$side" = A ]; then BIN=$A; else BIN=$B; fi
        start_truce data
        "$CLIENT" bench --url "http://$TRUCE_ADDR" --workload "$WORKLOADS" --connections 64 \
            --duration "$DURATION" --json | sed "s/^/{\"side\":\"$side\",\"run\":/; s/\$/}/" >> "$work/runs.jsonl"
        stop_truce
    done
done
python3 - "$work/runs.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = {}
for r in rows:
    cases.setdefault((r["run"]["workload"], r["side"]), []).append(r["run"]["ops_per_second"])
for (workload, side), values in sorted(cases.items()):
    print(f"{workload:<9} {side}  runs: {' '.join(f'{v:.0f}' for v in values)}  median {statistics.median(values):.0f}")
PY
