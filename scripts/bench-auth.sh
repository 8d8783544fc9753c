#!/usr/bin/env bash
# What an API key costs a request: alternating runs of the same workload against
# a fresh server without keys (every request `anonymous`) and one where every
# request carries a key (checked against the store: by each read, and by a
# document write's commit, once per batch), printing
# every run and the medians. BACKEND=postgres runs each server on a fresh
# database of a throw-away PostgreSQL cluster instead of the embedded store;
# SERVER=path/to/truce serves another build (the load generator stays this
# tree's release build).
#
#   scripts/bench-auth.sh [ROUNDS] [WORKLOADS] [CONNECTIONS]
#   BACKEND=postgres scripts/bench-auth.sh 3 create,update 64
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WORKLOADS=${2:-update,read}
CONNECTIONS=${3:-64}
DURATION=${DURATION:-6s}
BACKEND=${BACKEND:-embedded}
source scripts/lib.sh
CLIENT=$BIN
SERVER=${SERVER:-$BIN}
[ "$BACKEND" = postgres ] && start_pg

run=0
for round in $(seq "$ROUNDS"); do
    for side in anonymous key; do
        run=$((run + 1))
        if [ "$BACKEND" = postgres ]; then
            psql_pg -d postgres -c "CREATE DATABASE run$run"
            store_flags=(--database-url "$(pg_url "run$run")")
        else
            rm -rf "${work:?}/data"
            store_flags=(--data "$work/data")
        fi
        key_flags=()
        if [ "$side" = key ]; then
            key=$("$SERVER" keys create --name bench --role write --json "${store_flags[@]}" |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
            key_flags=(--key "$key")
        fi
        BIN=$SERVER start_serve data "${store_flags[@]}"
        "$CLIENT" bench --url "http://$TRUCE_ADDR" --workload "$WORKLOADS" --connections "$CONNECTIONS" \
            --duration "$DURATION" --json "${key_flags[@]}" |
            sed "s/^/{\"side\":\"$side\",\"run\":/; s/\$/}/" >> "$work/runs.jsonl"
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
    print(f"{workload:<9} {side:<9}  runs: {' '.join(f'{v:.0f}' for v in values)}  median {statistics.median(values):.0f}")
PY
