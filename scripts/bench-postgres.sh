#!/usr/bin/env bash
# truce on PostgreSQL, measured: the embedded store, one node on PostgreSQL and
# two nodes on the same PostgreSQL, next to what the database itself does with
# one-row update transactions (pgbench).
#
# Starts a throw-away PostgreSQL cluster from the machine's PostgreSQL (initdb,
# pg_ctl and pgbench on the PATH; as root it runs as the unprivileged user
# truce-pg, created if missing) with fsync and synchronous_commit on (the
# defaults), on a free loopback port and a temporary dir. Then, ROUNDS times:
# pgbench (a transaction = one UPDATE of one random row of pgbench_accounts,
# prepared statements) and `truce bench` create/update/read against the embedded
# store, one PostgreSQL node and two nodes (clients alternate between them), at
# 1, 16 and 64 connections. Prints the median of each case, the mean batch
# (writes per transaction or fsync), and the ratios the targets name.
#
#   ROUNDS=3 DURATION=5s scripts/bench-postgres.sh
#   WORKLOADS=update CONNECTIONS=64 scripts/bench-postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-1,16,64}
WORKLOADS=${WORKLOADS:-create,update,read}

command -v pgbench >/dev/null || {
    echo "pgbench is not on the PATH: apt-get install -y postgresql-15, then put /usr/lib/postgresql/15/bin on the PATH" >&2
    exit 1
}

source scripts/lib.sh
start_pg truce_one truce_two bench

# pgbench's tables at scale 10 (1M rows) and its one-row update transaction.
pgbench -h 127.0.0.1 -p "$pg_port" -U postgres -i -q -s 10 bench >/dev/null 2>&1
cat > "$work/update.sql" <<'SQL'
\set aid random(1, 1000000)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
SQL

start_truce embedded
embedded=$TRUCE_ADDR
start_serve one --database-url "$(pg_url truce_one)"
one=$TRUCE_ADDR
start_serve two-a --database-url "$(pg_url truce_two)"
two_a=$TRUCE_ADDR
start_serve two-b --database-url "$(pg_url truce_two)"
two_b=$TRUCE_ADDR
echo "postgres 127.0.0.1:$pg_port; embedded $embedded; one node $one; two nodes $two_a $two_b" >&2
echo "$ROUNDS rounds x $DURATION; workloads $WORKLOADS at $CONNECTIONS" >&2

seconds=${DURATION%s}
for round in $(seq "$ROUNDS"); do
    for conns in ${CONNECTIONS//,/ }; do
        jobs=$((conns < 2 ? conns : 2))
        tps=$(pgbench -h 127.0.0.1 -p "$pg_port" -U postgres -n -M prepared \
            -c "$conns" -j "$jobs" -T "$seconds" -f "$work/update.sql" bench 2>/dev/null |
            sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n 1)
        echo "{\"setup\":\"pgbench\",\"round\":$round,\"run\":{\"workload\":\"update\",\"connections\":$conns,\"ops_per_second\":$tps,\"p50_ms\":null,\"p99_ms\":null,\"mean_batch\":null,\"errors\":0}}" \
            >> "$work/results.jsonl"
    done
    for setup in embedded one two; do
        case $setup in
            embedded) urls="http://$embedded" ;;
            one) urls="http://$one" ;;
            two) urls="http://$two_a,http://$two_b" ;;
        esac
        "$BIN" bench --url "$urls" --workload "$WORKLOADS" --connections "$CONNECTIONS" \
            --duration "$DURATION" --json |
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
def med(runs, field):
    values = [x[field] for x in runs if x.get(field) is not None]
    return statistics.median(values) if values else None
names = {"pgbench": "pgbench (one-row UPDATE)", "embedded": "truce, embedded",
         "one": "truce, PostgreSQL, 1 node", "two": "truce, PostgreSQL, 2 nodes"}
order = ["pgbench", "embedded", "one", "two"]
rounds = max(len(v) for v in cases.values())
print(f"{'setup':<28}{'workload':<9}{'conns':>6}{'ops/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'batch':>7}{'errors':>7}  (median of {rounds} runs)")
for key in sorted(cases, key=lambda k: (order.index(k[0]), k[1], k[2])):
    setup, workload, conns = key
    runs = cases[key]
    fmt = lambda v, spec: format(v, spec) if v is not None else format("-", spec[0] + spec[1:].split(".")[0])
    print(f"{names[setup]:<28}{workload:<9}{conns:>6}{fmt(med(runs,'ops_per_second'),'>10.0f')}"
          f"{fmt(med(runs,'p50_ms'),'>8.2f')}{fmt(med(runs,'p99_ms'),'>8.2f')}"
          f"{fmt(med(runs,'mean_batch'),'>7.1f')}{sum(x['errors'] for x in runs):>7}")
def ops(setup, workload, conns):
    runs = cases.get((setup, workload, conns))
    return med(runs, "ops_per_second") if runs else None
top = max(c for (_, _, c) in cases)
pg = ops("pgbench", "update", top)
for workload in ("update", "create"):
    one = ops("one", workload, top)
    if pg and one:
        print(f"truce {workload}s on PostgreSQL (1 node) vs pgbench one-row updates at {top} connections: {one/pg:.2f}x")
for workload in ("create", "update", "read"):
    one, two, emb = ops("one", workload, top), ops("two", workload, top), ops("embedded", workload, top)
    if one and two:
        print(f"{workload}: two nodes vs one node at {top} connections: {two/one:.2f}x")
    if one and emb:
        print(f"{workload}: PostgreSQL (1 node) vs embedded at {top} connections: {one/emb:.2f}x")
PY
