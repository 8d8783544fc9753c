# Shared by the benchmark scripts: a release build, a temporary work dir cleaned up
# on exit (with every server started from it), and starting truce on a free
# loopback port.
#
# After `source scripts/lib.sh`: $BIN is the truce binary and $work the work dir.

cargo build --release --quiet
BIN=target/release/truce
work=$(mktemp -d)

cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# start_truce NAME [serve flags…]: serves a fresh data dir $work/NAME, logging to
# $work/NAME.log; sets TRUCE_PID and TRUCE_ADDR (host:port).
start_truce() {
    local name=$1
    shift
    rm -rf "${work:?}/$name"
    start_serve "$name" --data "$work/$name" "$@"
}

# start_serve NAME serve-flags…: `truce serve` on a free loopback port with
# these flags (e.g. --database-url), logging to $work/NAME.log; sets TRUCE_PID
# and TRUCE_ADDR (host:port).
start_serve() {
    local name=$1
    shift
    rm -f "${work:?}/$name.log"
    "$BIN" serve --listen 127.0.0.1:0 "$@" > "$work/$name.log" 2>&1 &
    TRUCE_PID=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$work/$name.log" 2>/dev/null && break
        sleep 0.1
    done
    TRUCE_ADDR=$(grep -o '127\.0\.0\.1:[0-9]*' "$work/$name.log" | head -n 1)
}

# stop_truce: stops the server started last.
stop_truce() {
    kill "$TRUCE_PID" 2>/dev/null || true
    wait "$TRUCE_PID" 2>/dev/null || true
}
