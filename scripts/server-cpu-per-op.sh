#!/usr/bin/env bash
# Server CPU time (user + system) per operation of one workload at 64 connections,
# in all and by thread (request workers, sequencer, checkpointer, ...): less
# sensitive to a noisy machine than throughput.
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
# CPU ticks so far of each of the server's threads, summed by thread name.
by_thread() {
    for task in /proc/"$pid"/task/*; do
        printf '%s %s\n' "$(tr ' ' '_' < "$task/comm")" "$(awk '{print $14 + $15}' "$task/stat")"
    done | awk '{ticks[$1] += $2} END {for (name in ticks) print name, ticks[name]}' | sort
}
# Warm up, then measure.
"$CLIENT" bench --url "http://$addr" --workload "$WORKLOAD" --connections 64 --duration 1s --json > /dev/null
before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
threads_before=$(by_thread)
ops=$("$CLIENT" bench --url "http://$addr" --workload "$WORKLOAD" --connections 64 --duration 4s --json |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["ops"])')
after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
threads_after=$(by_thread)
ticks=$(getconf CLK_TCK)
python3 -c "print(f'$WORKLOAD: {$ops} ops, server CPU {($after - $before) / $ticks * 1e6 / $ops:.1f} us per op')"
# Threads that exit during the run (none on this path) would be left out.
join <(echo "$threads_before") <(echo "$threads_after") |
    awk -v ops="$ops" -v hz="$ticks" '$3 > $2 { printf "  %-16s %5.1f us per op\n", $1, ($3 - $2) / hz * 1e6 / ops }'
