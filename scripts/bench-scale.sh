#!/usr/bin/env bash
# truce at scale: update and read at 64 connections against 10k, 100k and 1M
# documents of ~1 KiB, and against documents with 1, 100 and 1000 versions of
# history; the server's RSS and the data directory's size per document.
#
# Each size gets a fresh server and data dir, filled by `truce bench load`. Update
# runs on preloaded documents use `?if_version` for the first write of each document,
# so each round updates its own slice of the documents (whose version is known);
# reads pick documents at random from the whole set.
#
#   ROUNDS=3 DURATION=10s scripts/bench-scale.sh
#   SIZES=10000,100000 DEPTHS=1,100 scripts/bench-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
SIZES=${SIZES:-10000,100000,1000000}
DEPTHS=${DEPTHS:-1,100,1000}
BODY=${BODY:-1024}
OUT=${OUT:-}
SVG=${SVG:-docs/scale.svg}

source scripts/lib.sh

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$TRUCE_PID/status"; }

results="$work/results.jsonl"
IFS=, read -ra sizes <<< "$SIZES"
for n in "${sizes[@]}"; do
    start_truce data
    addr=$TRUCE_ADDR
    started=$(date +%s.%N)
    "$BIN" bench load --url "http://$addr" --docs "$n" --body-size "$BODY" --connections 64 2>>"$work/load.log"
    load_s=$(printf "%.3f" "$(echo "$(date +%s.%N) - $started" | bc)")
    rss_loaded=$(rss_mib)
    bytes=$(du -sb "$work/data" | cut -f1)
    for round in $(seq "$ROUNDS"); do
        # Each update round takes its own slice of the documents, all still at version 1.
        slice=$((n / ROUNDS))
        "$BIN" bench --url "http://$addr" --collection load --preloaded "$slice" \
            --preloaded-from $(((round - 1) * slice)) \
            --workload update --connections 64 --duration "$DURATION" \
            --body-size "$BODY" --json |
            sed "s/^/{\"kind\":\"size\",\"docs\":$n,\"round\":$round,\"run\":/; s/\$/}/" >> "$results"
        "$BIN" bench --url "http://$addr" --collection load --preloaded "$n" \
            --workload read --connections 64 --duration "$DURATION" \
            --body-size "$BODY" --json |
            sed "s/^/{\"kind\":\"size\",\"docs\":$n,\"round\":$round,\"run\":/; s/\$/}/" >> "$results"
    done
    echo "{\"kind\":\"footprint\",\"docs\":$n,\"load_seconds\":$load_s,\"rss_loaded_mib\":$rss_loaded,\"rss_after_mib\":$(rss_mib),\"data_bytes\":$bytes}" >> "$results"
    echo "size $n done" >&2
    stop_truce
done

IFS=, read -ra depths <<< "$DEPTHS"
for d in "${depths[@]}"; do
    start_truce data
    addr=$TRUCE_ADDR
    "$BIN" bench load --url "http://$addr" --docs 64 --versions "$d" --body-size "$BODY" --connections 64 2>>"$work/load.log"
    for round in $(seq "$ROUNDS"); do
        "$BIN" bench --url "http://$addr" --collection load --preloaded 64 --preloaded-version "$d" \
            --workload update --connections 64 --duration "$DURATION" --body-size "$BODY" --json |
            sed "s/^/{\"kind\":\"depth\",\"depth\":$d,\"round\":$round,\"run\":/; s/\$/}/" >> "$results"
    done
    echo "depth $d done" >&2
    stop_truce
done

[ -n "$OUT" ] && cp "$results" "$OUT"

python3 - "$results" "$SVG" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else float("nan")
print("documents of ~1 KiB, 64 connections; medians")
print(f"{'docs':>9} {'workload':<8} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'refused':>8}")
series = {}
for n in sorted({r["docs"] for r in rows if r["kind"] == "size"}):
    for w in ("update", "read"):
        runs = [r["run"] for r in rows if r["kind"] == "size" and r["docs"] == n and r["run"]["workload"] == w]
        ops, p50, p99 = (med([x[f] for x in runs]) for f in ("ops_per_second", "p50_ms", "p99_ms"))
        refused = sum(x["refused"] for x in runs)
        series.setdefault(w, []).append((n, ops, p99))
        print(f"{n:>9} {w:<8} {ops:>8.0f} {p50:>7.2f} {p99:>7.2f} {refused:>8}")
print()
print(f"{'docs':>9} {'load s':>7} {'RSS loaded MiB':>15} {'RSS after MiB':>14} {'data MiB':>9} {'bytes/doc':>10}")
for f in (r for r in rows if r["kind"] == "footprint"):
    print(f"{f['docs']:>9} {f['load_seconds']:>7.1f} {f['rss_loaded_mib']:>15} {f['rss_after_mib']:>14} "
          f"{f['data_bytes']/2**20:>9.0f} {f['data_bytes']/f['docs']:>10.0f}")
print()
print("history depth (64 documents, one per connection), update; medians")
print(f"{'versions':>9} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
for d in sorted({r["depth"] for r in rows if r["kind"] == "depth"}):
    runs = [r["run"] for r in rows if r["kind"] == "depth" and r["depth"] == d]
    print(f"{d:>9} {med([x['ops_per_second'] for x in runs]):>8.0f} {med([x['p50_ms'] for x in runs]):>7.2f} {med([x['p99_ms'] for x in runs]):>7.2f}")

# A small SVG: ops/s (left) and p99 (right panel) against the number of documents.
W, H, PAD = 720, 300, 50
colors = {"update": "#c0392b", "read": "#2471a3"}
def panel(x0, title, index, unit):
    values = [p[index] for s in series.values() for p in s]
    top = max(values) * 1.15 if values else 1
    xs = sorted({p[0] for s in series.values() for p in s})
    pw = W / 2 - PAD * 1.5
    ph = H - PAD * 2
    def px(n):
        return x0 + PAD + (xs.index(n) / max(1, len(xs) - 1)) * pw
    def py(v):
        return PAD + ph - v / top * ph
    out = [f'<text x="{x0 + PAD}" y="{PAD - 18}" font-size="13">{title}</text>',
           f'<line x1="{x0+PAD}" y1="{PAD+ph}" x2="{x0+PAD+pw}" y2="{PAD+ph}" stroke="#444"/>',
           f'<line x1="{x0+PAD}" y1="{PAD}" x2="{x0+PAD}" y2="{PAD+ph}" stroke="#444"/>']
    for i in range(5):
        v = top * i / 4
        out.append(f'<text x="{x0+PAD-6}" y="{py(v)+4}" font-size="10" text-anchor="end">{v:.0f}{unit}</text>')
    for n in xs:
        label = f"{n//1000}k" if n < 10**6 else f"{n//10**6}M"
        out.append(f'<text x="{px(n)}" y="{PAD+ph+16}" font-size="10" text-anchor="middle">{label}</text>')
    for w, pts in series.items():
        path = " ".join(f"{px(p[0]):.1f},{py(p[index]):.1f}" for p in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colors[w]}" stroke-width="2"/>')
        for p in pts:
            out.append(f'<circle cx="{px(p[0]):.1f}" cy="{py(p[index]):.1f}" r="3" fill="{colors[w]}"/>')
    return out
body = panel(0, "ops/s at 64 connections", 1, "") + panel(W / 2, "p99 latency (ms)", 2, "")
legend = [f'<text x="{W-150}" y="{20+16*i}" font-size="11" fill="{c}">&#9632; {w}</text>' for i, (w, c) in enumerate(colors.items())]
svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">' \
      f'<rect width="100%" height="100%" fill="white"/>{"".join(body + legend)}</svg>'
open(sys.argv[2], "w").write(svg)
print(f"\nwrote {sys.argv[2]}")
PY
