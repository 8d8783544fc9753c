#!/usr/bin/env bash
# What conflicts cost: accepted updates against refused stale writes (each leaves a
# conflict record) and against stale writes merged by the `merge` policy, at 64
# connections, alternating rounds against fresh servers; prints every run and the
# medians.
#
#   scripts/bench-conflicts.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${DURATION:-4s}
# Each merged write uses up one document (its base must be disjoint from what
# changed since): enough for a run at 64 connections.
DOCS=${DOCS:-2000}
source scripts/lib.sh

for round in $(seq "$ROUNDS"); do
    for workload in update stale merge; do
        start_truce data
        docs=4
        if [ "$workload" = merge ]; then docs=$DOCS; fi
        "$BIN" bench --url "http://$TRUCE_ADDR" --workload "$workload" --connections 64 \
            --duration "$DURATION" --docs "$docs" --json >> "$work/runs.jsonl"
        stop_truce
    done
done
python3 - "$work/runs.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = {}
for r in rows:
    cases.setdefault(r["workload"], []).append(r)
medians = {}
for workload, runs in cases.items():
    rates = [r["ops_per_second"] for r in runs]
    medians[workload] = statistics.median(rates)
    p99 = statistics.median(r["p99_ms"] for r in runs)
    errors = sum(r["errors"] for r in runs)
    refused = sum(r["refused"] for r in runs)
    print(f"{workload:<7} runs: {' '.join(f'{v:.0f}' for v in rates)}  median {medians[workload]:.0f}/s"
          f"  p99 {p99:.2f} ms  errors {errors}  refused {refused}")
for workload in ("stale", "merge"):
    if workload in medians and "update" in medians:
        print(f"one {workload} write costs {medians['update'] / medians[workload]:.2f}x an accepted update")
PY
