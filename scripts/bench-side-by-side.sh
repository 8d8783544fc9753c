#!/usr/bin/env bash
# truce side by side with etcd and with the machine's HTTP ceiling.
#
# Installs etcd-server and wrk with apt when missing, starts etcd (fsync on, data in
# a temporary dir, loopback only) and truce (embedded store, temporary dir), and runs
# every workload of `truce bench` against truce, etcd and the in-process ceiling at
# 1, 16 and 64 connections, alternating targets, ROUNDS times. Prints one table of
# medians with the truce/etcd and truce/ceiling ratios, then cross-checks the read
# workload with wrk.
#
# SERVER=path/to/truce serves another build of truce (the load generator stays
# this tree's release build).
#
#   ROUNDS=3 DURATION=5s scripts/bench-side-by-side.sh
#   WORKLOADS=update,read CONNECTIONS=64 scripts/bench-side-by-side.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-1,16,64}
WORKLOADS=${WORKLOADS:-create,update,hot,read,read-304,mixed}
OUT=${OUT:-}

source scripts/lib.sh
need_wrk
CLIENT=$BIN

# etcd: one member, loopback, fsync on (the default), its own temporary data dir;
# truce: embedded store in a temporary dir, default settings (logs included).
start_etcd
etcd_client=${ETCD_ADDR#*:}
BIN=${SERVER:-$BIN} start_truce truce
truce_addr=$TRUCE_ADDR
echo "truce $truce_addr, etcd 127.0.0.1:$etcd_client; $ROUNDS rounds x $DURATION; workloads $WORKLOADS at $CONNECTIONS" >&2

for round in $(seq "$ROUNDS"); do
    for target in truce etcd ceiling; do
        case $target in
            truce) url="http://$truce_addr" ;;
            etcd) url="http://127.0.0.1:$etcd_client" ;;
            ceiling) url="" ;;
        esac
        "$CLIENT" bench --target "$target" ${url:+--url "$url"} --workload "$WORKLOADS" \
            --connections "$CONNECTIONS" --duration "$DURATION" --json \
            | sed "s/^/{\"round\":$round,\"run\":/; s/\$/}/" >> "$work/results.jsonl"
        echo "round $round: $target done" >&2
    done
done

# The read workload once more, measured by wrk (a different client) on one document.
curl -sf -X PUT "http://$truce_addr/v1/wrk/doc" -H 'Content-Type: application/json' \
    -d "{\"pad\":\"$(printf 'x%.0s' $(seq 230))\"}" >/dev/null
wrk_out=$(wrk -t2 -c64 -d"$DURATION" --latency "http://$truce_addr/v1/wrk/doc")
bench_out=$("$CLIENT" bench --target truce --url "http://$truce_addr" --workload read \
    --connections 64 --duration "$DURATION" --json)

[ -n "$OUT" ] && cp "$work/results.jsonl" "$OUT"

python3 - "$work/results.jsonl" "$wrk_out" "$bench_out" <<'PY'
import json, re, statistics, sys
rows = [json.loads(line)["run"] for line in open(sys.argv[1])]
runs = {}
for r in rows:
    runs.setdefault((r["workload"], r["connections"], r["target"]), []).append(r)
def med(key, field):
    values = [x[field] for x in runs.get(key, []) if x.get(field) is not None]
    return statistics.median(values) if values else None
workloads = []
for r in rows:
    if r["workload"] not in workloads:
        workloads.append(r["workload"])
conns = sorted({r["connections"] for r in rows})
rounds = max(len(v) for v in runs.values())
print(f"medians of {rounds} runs; ops/s; latency in ms")
head = f"{'workload':<9}{'conns':>6}{'truce':>9}{'etcd':>9}{'ceiling':>9}{'t/etcd':>8}{'t/ceil':>8}{'t p50':>7}{'t p99':>7}{'t p99.9':>8}{'e p99':>7}{'errors':>7}  notes"
print(head)
for w in workloads:
    for c in conns:
        t, e, g = (med((w, c, x), "ops_per_second") for x in ("truce", "etcd", "ceiling"))
        fmt = lambda v, spec: format(v, spec) if v is not None else "n/a".rjust(len(format(0, spec)))
        ratio = lambda a, b: f"{a/b:8.2f}" if a and b else "     n/a"
        errors = sum(x["errors"] for k, v in runs.items() if k[0] == w and k[1] == c for x in v)
        notes = []
        if w == "hot":
            share = med((w, c, "truce"), "refused_share")
            eshare = med((w, c, "etcd"), "refused_share")
            if share is not None:
                notes.append(f"truce {share*100:.0f}% refused")
            if eshare is not None:
                notes.append(f"etcd {eshare*100:.0f}% refused")
            bad = [x for k, v in runs.items() if k[0] == w and k[1] == c for x in v if x.get("hot_consistent") is False]
            notes.append("FINAL VALUE WRONG" if bad else "final values exact")
        print(f"{w:<9}{c:>6}{fmt(t,'9.0f')}{fmt(e,'9.0f')}{fmt(g,'9.0f')}{ratio(t,e)}{ratio(t,g)}"
              f"{fmt(med((w,c,'truce'),'p50_ms'),'7.2f')}{fmt(med((w,c,'truce'),'p99_ms'),'7.2f')}"
              f"{fmt(med((w,c,'truce'),'p999_ms'),'8.2f')}{fmt(med((w,c,'etcd'),'p99_ms'),'7.2f')}{errors:>7}  {'; '.join(notes)}")
wrk = sys.argv[2]
rps = re.search(r"Requests/sec:\s+([\d.]+)", wrk)
p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", wrk)
bench = json.loads(sys.argv[3])
print()
print("cross-check, read at 64 connections:")
if rps:
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99ms = float(p99.group(1)) * unit[p99.group(2)] if p99 else float("nan")
    print(f"  wrk:         {float(rps.group(1)):9.0f} req/s, p99 {p99ms:.2f} ms (one document)")
print(f"  truce bench: {bench['ops_per_second']:9.0f} req/s, p99 {bench['p99_ms']:.2f} ms (4 documents per client)")
PY
