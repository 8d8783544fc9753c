#!/usr/bin/env bash
# Tail latency of durable writes at 64 connections, with two clients.
#
# For each round, each workload (create, update) and each client (`truce bench`,
# wrk with scripts/wrk/*.lua), starts a fresh truce (embedded store, default
# settings, logs on) on a temporary data dir, warms it up with 1 s of creates,
# and runs DURATION at CONNECTIONS.
# Records throughput, p50/p99/p99.9, the errors, the server's mean checkpoint
# time, how many of the log's appends (a frame written and flushed) took over
# 2.5 ms (both from /metrics), and the bytes written to the disk per write (from
# /proc/diskstats: the whole machine's, so run it with nothing else writing).
# Prints medians of ROUNDS.
#
# SERVER=path/to/truce measures another build of the server (the load generator
# stays this tree's release build).
#
#   ROUNDS=3 DURATION=8s scripts/bench-tail.sh
#   CLIENTS=wrk WORKLOADS=create SERVE_FLAGS="--checkpoint-interval 1s" scripts/bench-tail.sh
#   SERVER=/tmp/truce-before ROUNDS=3 scripts/bench-tail.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}
WORKLOADS=${WORKLOADS:-create,update}
CLIENTS=${CLIENTS:-bench,wrk}
SERVE_FLAGS=${SERVE_FLAGS:-}

source scripts/lib.sh
need_wrk
CLIENT=$BIN
BIN=${SERVER:-$BIN}

writes() { local n; n=$(metric truce_commit_batch_size_sum); echo "${n:-0}"; }
# Log appends (frame written and flushed) so far that took over 2.5 ms.
slow_appends() {
    local all quick
    all=$(metric truce_log_append_seconds_count)
    quick=$(metric 'truce_log_append_seconds_bucket{le="0.0025"}')
    echo $(( ${all:-0} - ${quick:-0} ))
}

for round in $(seq "$ROUNDS"); do
    for workload in ${WORKLOADS//,/ }; do
        for client in ${CLIENTS//,/ }; do
            # shellcheck disable=SC2086
            start_truce data $SERVE_FLAGS
            url="http://$TRUCE_ADDR"
            if [ "$client" = wrk ] && [ "$workload" = update ]; then
                for i in $(seq 0 255); do
                    curl -sf -X PUT "$url/v1/wrk/u$i" -H 'Content-Type: application/json' \
                        -d '{"n":0}' >/dev/null
                done
            fi
            # Warm up (the log's files grow to their working size once per data
            # directory), then measure.
            "$CLIENT" bench --url "$url" --workload create --connections "$CONNECTIONS" \
                --duration 1s --json > /dev/null
            before_writes=$(writes)
            before_slow=$(slow_appends)
            before_bytes=$(disk_bytes)
            if [ "$client" = wrk ]; then
                run=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s "scripts/wrk/$workload.lua" "$url" | tail -n 1)
            else
                run=$("$CLIENT" bench --url "$url" --workload "$workload" \
                    --connections "$CONNECTIONS" --duration "$DURATION" --json)
            fi
            after_bytes=$(disk_bytes)
            after_writes=$(writes)
            sum=$(metric truce_checkpoint_seconds_sum)
            count=$(metric truce_checkpoint_seconds_count)
            echo "{\"workload\":\"$workload\",\"client\":\"$client\",\"written\":$((after_bytes - before_bytes)),\"writes\":$(( ${after_writes%.*} - ${before_writes%.*} )),\"checkpoint_sum\":${sum:-0},\"checkpoints\":${count:-0},\"slow_appends\":$(( $(slow_appends) - before_slow )),\"run\":$run}" \
                >> "$work/results.jsonl"
            stop_truce
            echo "round $round: $workload with $client done" >&2
        done
    done
done

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["workload"], r["client"]), []).append(r)
med = statistics.median
print(f"medians of {max(len(g) for g in groups.values())} runs; latency in ms")
print(f"{'workload':<9}{'client':<7}{'ops/s':>9}{'p50':>7}{'p99':>7}{'p99.9':>8}{'errors':>7}{'ckpt ms':>9}{'KB/write':>9}{'slow flush':>11}")
for (workload, client), g in groups.items():
    ops = med(r["run"]["ops_per_second"] for r in g)
    p50 = med(r["run"]["p50_ms"] for r in g)
    p99 = med(r["run"]["p99_ms"] for r in g)
    p999 = med(r["run"]["p999_ms"] for r in g)
    errors = sum(r["run"].get("errors", 0) for r in g)
    ckpt = med(1000 * r["checkpoint_sum"] / r["checkpoints"] if r["checkpoints"] else 0 for r in g)
    kb = med(r["written"] / r["writes"] / 1024 if r["writes"] else 0 for r in g)
    slow = med(r.get("slow_appends", 0) for r in g)
    print(f"{workload:<9}{client:<7}{ops:>9.0f}{p50:>7.2f}{p99:>7.2f}{p999:>8.2f}{errors:>7}{ckpt:>9.2f}{kb:>9.2f}{slow:>11.0f}")
PY
