#!/usr/bin/env bash
# truce on both backends next to etcd, in the same run: truce on the embedded
# store, truce on PostgreSQL (one node, and two nodes with the clients
# alternating between them) and etcd (v3 JSON gateway).
#
# Workloads of `truce bench` (WORKLOADS, default the three below), ROUNDS times,
# targets alternating:
#   lock          uncontended: each client takes and releases its own lock; an
#                 operation is the pair (etcd: lock + unlock under a lease
#                 granted once per client)
#   lock-handoff  every client waits for one lock and releases it at once; an
#                 operation is a grant, its latency the hand-off from the
#                 holder sending its release to the next waiter's grant
#   txn           transactions of 10 conditional replaces, each client on its
#                 own 10 documents (etcd: a txn of 10 compares and 10 puts)
# and, with WORKLOADS=itxn,itxn-hot, interactive transactions (truce only; etcd
# has none): begin, read, write, commit, on each client's own documents or on
# one shared document.
# Prints the median of each case and the truce/etcd ratios.
#
#   ROUNDS=3 DURATION=5s scripts/bench-backends.sh
#   WORKLOADS=txn CONNECTIONS=16 scripts/bench-backends.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-1,16,64}
WORKLOADS=${WORKLOADS:-lock,lock-handoff,txn}

source scripts/lib.sh
start_pg truce_one truce_two
start_etcd
start_truce embedded
embedded=$TRUCE_ADDR
start_serve one --database-url "$(pg_url truce_one)"
one=$TRUCE_ADDR
start_serve two-a --database-url "$(pg_url truce_two)"
two_a=$TRUCE_ADDR
start_serve two-b --database-url "$(pg_url truce_two)"
two_b=$TRUCE_ADDR
echo "etcd $ETCD_ADDR; embedded $embedded; PostgreSQL 127.0.0.1:$pg_port: one node $one, two nodes $two_a $two_b" >&2
echo "$ROUNDS rounds x $DURATION; workloads $WORKLOADS at $CONNECTIONS" >&2

for round in $(seq "$ROUNDS"); do
    for setup in etcd embedded one two; do
        target=truce
        case $setup in
            etcd) target=etcd urls="http://$ETCD_ADDR" ;;
            embedded) urls="http://$embedded" ;;
            one) urls="http://$one" ;;
            two) urls="http://$two_a,http://$two_b" ;;
        esac
        "$BIN" bench --target "$target" --url "$urls" --workload "$WORKLOADS" \
            --connections "$CONNECTIONS" --duration "$DURATION" --json |
            sed "s/^/{\"setup\":\"$setup\",\"round\":$round,\"run\":/; s/\$/}/" \
            >> "$work/results.jsonl"
    done
    echo "round $round done" >&2
done

python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cases = {}
for r in rows:
    cases.setdefault((r["setup"], r["run"]["workload"], r["run"]["connections"]), []).append(r["run"])
med = lambda runs, field: statistics.median(x[field] for x in runs)
names = {"etcd": "etcd", "embedded": "truce, embedded",
         "one": "truce, PostgreSQL, 1 node", "two": "truce, PostgreSQL, 2 nodes"}
order = list(names)
rounds = max(len(v) for v in cases.values())
print(f"{'setup':<28}{'workload':<14}{'conns':>6}{'ops/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}  (median of {rounds} runs)")
for key in sorted(cases, key=lambda k: (k[1], k[2], order.index(k[0]))):
    setup, workload, conns = key
    runs = cases[key]
    print(f"{names[setup]:<28}{workload:<14}{conns:>6}{med(runs,'ops_per_second'):>9.0f}"
          f"{med(runs,'p50_ms'):>8.2f}{med(runs,'p99_ms'):>8.2f}{sum(x['errors'] for x in runs):>7}")
print()
for (setup, workload, conns), runs in sorted(cases.items()):
    peer = cases.get(("etcd", workload, conns))
    if setup == "etcd" or not peer:
        continue
    ratio = med(runs, "ops_per_second") / med(peer, "ops_per_second")
    line = f"{names[setup]:<28}{workload:<14}{conns:>4} conns: {ratio:.2f}x etcd's ops/s"
    if workload == "lock-handoff" and conns > 1:
        line += f", hand-off p50 {med(runs,'p50_ms'):.2f} vs {med(peer,'p50_ms'):.2f} ms, p99 {med(runs,'p99_ms'):.2f} vs {med(peer,'p99_ms'):.2f} ms"
    print(line)
PY
