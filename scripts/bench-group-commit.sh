#!/usr/bin/env bash
# Group commit, measured.
#
# Starts two truce servers on loopback, each on its own temporary data dir: one with
# group commit (the default) and one forced to one fsync per write (--max-batch 1).
# Runs `truce bench` (durable If-Match replaces, each client on its own documents)
# at 1, 16 and 64 connections against each, alternating servers, ROUNDS times, and
# prints the median writes/s, p99 and mean commit batch per case, plus the ratios.
#
#   ROUNDS=5 DURATION=10s scripts/bench-group-commit.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-1,16,64}

source scripts/lib.sh

start_truce group
group=$TRUCE_ADDR
start_truce single --max-batch 1
single=$TRUCE_ADDR
echo "group commit: $group   one fsync per write: $single   rounds: $ROUNDS x $DURATION" >&2

for round in $(seq "$ROUNDS"); do
    for mode in group single; do
        if [ "$mode" = group ]; then addr=$group; else addr=$single; fi
        "$BIN" bench --url "http://$addr" --workload update --connections "$CONNECTIONS" \
            --duration "$DURATION" --json |
            sed "s/^/{\"mode\":\"$mode\",\"round\":$round,\"run\":/; s/\$/}/" \
            >> "$work/results.jsonl"
        echo "round $round $mode done" >&2
    done
done

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cases = {}
for r in rows:
    cases.setdefault((r["mode"], r["run"]["connections"]), []).append(r["run"])
def med(runs, field):
    values = [x[field] for x in runs if x[field] is not None]
    return statistics.median(values) if values else None
print(f"{'mode':<22}{'conns':>6}{'writes/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'batch':>7}{'errors':>7}  (median of {len(rows)//max(1,len(cases))} runs)")
for (mode, conns), runs in sorted(cases.items(), key=lambda kv: (kv[0][0] != "group", kv[0][1])):
    name = "group commit" if mode == "group" else "one fsync per write"
    batch = med(runs, "mean_batch")
    print(f"{name:<22}{conns:>6}{med(runs,'ops_per_second'):>11.0f}{med(runs,'p50_ms'):>8.2f}"
          f"{med(runs,'p99_ms'):>8.2f}{(batch or 0):>7.1f}{sum(x['errors'] for x in runs):>7}")
conns = sorted({c for (_, c) in cases})
g = {c: med(cases[("group", c)], "ops_per_second") for c in conns}
s = {c: med(cases[("single", c)], "ops_per_second") for c in conns}
lo, hi = conns[0], conns[-1]
print(f"group commit, {hi} vs {lo} connections: {g[hi]/g[lo]:.1f}x")
print(f"one fsync per write, {hi} vs {lo} connections: {s[hi]/s[lo]:.1f}x")
print(f"group commit vs one fsync per write at {hi} connections: {g[hi]/s[hi]:.1f}x")
PY
