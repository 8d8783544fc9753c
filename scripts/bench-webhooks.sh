#!/usr/bin/env bash
# Webhook delivery throughput to a loopback receiver: a subscription to every
# conflict event, a burst of refused writes (one event each), and the time until
# the outbox is empty again. The receiver is Python's threading HTTP server, which
# answers 204 to every POST; its own speed bounds what is measured.
#
#   scripts/bench-webhooks.sh [SECONDS_OF_LOAD]
set -euo pipefail
cd "$(dirname "$0")/.."
LOAD=${1:-3}
source scripts/lib.sh

python3 - "$work/receiver.port" > "$work/receiver.log" 2>&1 <<'PY' &
import http.server, sys, threading
class Hook(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0
    lock = threading.Lock()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with Hook.lock:
            Hook.count += 1
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
open(sys.argv[1], "w").write(str(server.server_address[1]))
server.serve_forever()
PY
for _ in $(seq 50); do [ -s "$work/receiver.port" ] && break; sleep 0.1; done
PORT=$(cat "$work/receiver.port")

start_truce data
curl -sf -X POST "http://$TRUCE_ADDR/v1/_subscriptions" -H 'content-type: application/json' \
    -d "{\"url\": \"http://127.0.0.1:$PORT/hook\", \"secret\": \"bench\"}" > "$work/sub.json"
SID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/sub.json")

start=$(date +%s.%N)
"$BIN" bench --url "http://$TRUCE_ADDR" --workload stale --connections 16 --duration "${LOAD}s" \
    --docs 4 --json > "$work/load.json"
loaded=$(date +%s.%N)
events=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ops"])' "$work/load.json")
# Wait (bounded) until nothing is pending.
for _ in $(seq 600); do
    pending=$(curl -sf "http://$TRUCE_ADDR/v1/_subscriptions/$SID/deliveries?limit=1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["pending"])')
    [ "$pending" = 0 ] && break
    sleep 0.1
done
drained=$(date +%s.%N)
curl -sf "http://$TRUCE_ADDR/metrics" | grep '^truce_webhook_deliveries_total' || true
python3 - "$start" "$loaded" "$drained" "$events" "$pending" <<'PY'
import sys
start, loaded, drained = map(float, sys.argv[1:4])
events, pending = int(sys.argv[4]), int(sys.argv[5])
print(f"events {events}, load {loaded - start:.1f} s, outbox empty {drained - start:.1f} s after the start"
      f" ({drained - loaded:.1f} s after the load), pending at the end {pending}")
print(f"delivered {events / (drained - start):.0f}/s over the whole run")
PY
stop_truce
