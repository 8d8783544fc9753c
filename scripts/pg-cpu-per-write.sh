#!/usr/bin/env bash
# CPU per write on PostgreSQL, by process: the database (every postgres
# process, reaped children included), the truce node and the load generator,
# for two builds in alternating runs at 64 connections, each node on a fresh
# database of one throw-away cluster; with the writes per second and p99.
#
# PG_SETTINGS="name=value ..." sets PostgreSQL settings first (ALTER SYSTEM and
# a reload), e.g. PG_SETTINGS="autovacuum=off" to see the background's share.
#
#   scripts/pg-cpu-per-write.sh path/to/truce-before path/to/truce-after [ROUNDS] [WORKLOADS]
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
ROUNDS=${3:-3}
WORKLOADS=${4:-create update}
DURATION=${DURATION:-5s}
source scripts/lib.sh
CLIENT=$BIN
start_pg
for setting in ${PG_SETTINGS:-}; do
    psql_pg -d postgres -c "ALTER SYSTEM SET ${setting%%=*} = '${setting#*=}'"
done
[ -n "${PG_SETTINGS:-}" ] && psql_pg -d postgres -c "SELECT pg_reload_conf()" >/dev/null

# user + system ticks of every postgres process, with their reaped children's
database_ticks() {
    local total=0 pid
    for pid in $(pgrep -u "$(stat -c %U "$work/pg/data")" postgres); do
        total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

run=0
for round in $(seq "$ROUNDS"); do
    for side in A B; do
        if [ "$side" = A ]; then SERVER=$A; else SERVER=$B; fi
        for workload in $WORKLOADS; do
            run=$((run + 1))
            psql_pg -d postgres -c "CREATE DATABASE run$run"
            BIN=$SERVER start_serve node --database-url "$(pg_url "run$run")"
            "$CLIENT" bench --url "http://$TRUCE_ADDR" --workload "$workload" --connections 64 \
                --duration 1s --json > /dev/null
            db0=$(database_ticks)
            node0=$(awk '{print $14 + $15}' "/proc/$TRUCE_PID/stat")
            /usr/bin/time -f "%U %S" -o "$work/client.time" "$CLIENT" bench --url "http://$TRUCE_ADDR" \
                --workload "$workload" --connections 64 --duration "$DURATION" --json > "$work/run.json"
            db1=$(database_ticks)
            node1=$(awk '{print $14 + $15}' "/proc/$TRUCE_PID/stat")
            python3 - "$side" "$workload" "$db0" "$db1" "$node0" "$node1" "$(getconf CLK_TCK)" \
                "$work/run.json" "$work/client.time" <<'PY' | tee -a "$work/rows.txt"
import json, sys
side, workload, db0, db1, node0, node1, hz, run, times = sys.argv[1:]
d = json.loads(open(run).readline())
user, system = map(float, open(times).read().split()[-2:])
ops, us = d["ops"], 1e6 / int(hz)
print(f"{side} {workload:<7} {d['ops_per_second']:8.0f}/s  p99 {d['p99_ms']:6.2f} ms  "
      f"database {(int(db1) - int(db0)) * us / ops:6.1f}  node {(int(node1) - int(node0)) * us / ops:6.1f}  "
      f"load generator {(user + system) * 1e6 / ops:5.1f} us per write")
PY
            stop_truce
        done
    done
done
echo "medians (A = $A, B = $B):"
python3 - "$work/rows.txt" <<'PY'
import re, statistics, sys
cases = {}
for line in open(sys.argv[1]):
    side, workload, rest = line.split(None, 2)
    nums = [float(x) for x in re.findall(r"[\d.]+", rest.replace("p99", ""))]
    cases.setdefault((workload, side), []).append(nums)
for (workload, side), rows in sorted(cases.items()):
    m = [statistics.median(col) for col in zip(*rows)]
    print(f"{workload:<7} {side}  {m[0]:8.0f} writes/s  p99 {m[1]:6.2f} ms  database {m[2]:6.1f}  node {m[3]:6.1f}  load generator {m[4]:5.1f} us per write")
PY
