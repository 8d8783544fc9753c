#!/usr/bin/env bash
# What an API key costs a request: alternating runs of the same workload against
# a fresh server without keys (every request `anonymous`) and one where every
# request carries a key (checked against the store on each request), printing
# every run and the medians.
#
#   scripts/bench-auth.sh [ROUNDS] [WORKLOADS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WORKLOADS=${2:-update,read}
CONNECTIONS=${3:-64}
DURATION=${DURATION:-6s}
source scripts/lib.sh

for round in $(seq "$ROUNDS"); do
    for side in anonymous key; do
        rm -rf "${work:?}/data"
        key_flags=()
        if [ "$side" = key ]; then
            key=$("$BIN" keys create --name bench --role write --json --data "$work/data" |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
            key_flags=(--key "$key")
        fi
        start_serve data --data "$work/data"
        "$BIN" bench --url "http://$TRUCE_ADDR" --workload "$WORKLOADS" --connections "$CONNECTIONS" \
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
