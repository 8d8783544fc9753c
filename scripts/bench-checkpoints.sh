#!/usr/bin/env bash
# The write-ahead log and the checkpoint interval, measured.
#
# For each checkpoint interval (0s = every commit durable in the redb file, the log
# unused) and each write workload, starts a fresh truce on a temporary data dir, runs
# `truce bench` at 64 connections, and reads the server's own figures: the mean
# checkpoint time from /metrics, and the bytes written to the data directory's disk
# per write (sectors written, from /proc/diskstats: the whole machine's, so run it
# with nothing else writing). Intervals alternate within each round; prints medians
# of ROUNDS.
#
#   ROUNDS=3 DURATION=5s scripts/bench-checkpoints.sh
#   INTERVALS=0s,250ms WORKLOADS=create scripts/bench-checkpoints.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
INTERVALS=${INTERVALS:-0s,100ms,250ms,1s}
WORKLOADS=${WORKLOADS:-create,update}

source scripts/lib.sh

for round in $(seq "$ROUNDS"); do
    for workload in ${WORKLOADS//,/ }; do
        for interval in ${INTERVALS//,/ }; do
            start_truce data --checkpoint-interval "$interval"
            written_before=$(disk_bytes)
            run=$("$BIN" bench --url "http://$TRUCE_ADDR" --workload "$workload" \
                --connections 64 --duration "$DURATION" --json)
            written_after=$(disk_bytes)
            sum=$(metric truce_checkpoint_seconds_sum)
            count=$(metric truce_checkpoint_seconds_count)
            echo "{\"interval\":\"$interval\",\"written\":$((written_after - written_before)),\"checkpoint_sum\":${sum:-0},\"checkpoints\":${count:-0},\"run\":$run}" \
                >> "$work/results.jsonl"
            stop_truce
            echo "round $round $workload $interval done" >&2
        done
    done
done

python3 - "$work/results.jsonl" "$INTERVALS" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
order = sys.argv[2].split(",")
cases = {}
for r in rows:
    cases.setdefault((r["run"]["workload"], r["interval"]), []).append(r)
med = statistics.median
print(f"{'workload':<9}{'interval':>9}{'writes/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'p99.9 ms':>9}"
      f"{'checkpoint ms':>14}{'KB written/write':>17}  (median of {len(rows)//max(1,len(cases))} runs)")
for (workload, interval), runs in sorted(cases.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]))):
    ops = [r["run"]["ops"] for r in runs]
    checkpoint = [r["checkpoint_sum"] / r["checkpoints"] * 1000 for r in runs if r["checkpoints"]]
    written = [r["written"] / max(1, r["run"]["ops"]) / 1000 for r in runs]
    print(f"{workload:<9}{interval:>9}{med(r['run']['ops_per_second'] for r in runs):>10.0f}"
          f"{med(r['run']['p50_ms'] for r in runs):>8.2f}{med(r['run']['p99_ms'] for r in runs):>8.2f}"
          f"{med(r['run']['p999_ms'] for r in runs):>9.2f}"
          f"{(med(checkpoint) if checkpoint else 0):>14.2f}{med(written):>17.2f}")
PY
