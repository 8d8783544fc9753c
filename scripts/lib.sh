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

# free_port: prints a free loopback TCP port.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_etcd: one etcd member (installed with apt when missing) on free loopback
# ports, fsync on (the default), data in $work/etcd; waits until it answers and
# sets ETCD_ADDR (host:port).
start_etcd() {
    if ! command -v etcd >/dev/null 2>&1; then
        echo "installing etcd-server with apt" >&2
        apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null
    fi
    local client peer
    client=$(free_port)
    peer=$(free_port)
    etcd --name bench --data-dir "$work/etcd" \
        --listen-client-urls "http://127.0.0.1:$client" \
        --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" \
        --log-level error > "$work/etcd.log" 2>&1 &
    ETCD_ADDR=127.0.0.1:$client
    for _ in $(seq 100); do
        curl -sf -X POST "http://$ETCD_ADDR/v3/kv/range" -d '{"key":"AA=="}' >/dev/null && return
        sleep 0.1
    done
    echo "etcd did not start; see $work/etcd.log" >&2
    return 1
}

# start_pg DATABASE…: a throw-away PostgreSQL cluster from the machine's
# PostgreSQL (initdb and pg_ctl on the PATH; as root it runs as the unprivileged
# user truce-pg, created if missing), fsync and synchronous_commit on (the
# defaults), on a free loopback port in $work/pg, with these databases made. Sets
# pg_port; pg_url DB prints a database's URL; psql_pg runs psql on the cluster.
# The cluster is stopped on exit.
start_pg() {
    for tool in initdb pg_ctl psql; do
        command -v "$tool" >/dev/null || {
            echo "$tool is not on the PATH: apt-get install -y postgresql-15, then put /usr/lib/postgresql/15/bin on the PATH" >&2
            return 1
        }
    done
    as_pg=()
    if [ "$(id -u)" = 0 ]; then
        id truce-pg >/dev/null 2>&1 ||
            useradd --system --no-create-home --shell /usr/sbin/nologin truce-pg
        as_pg=(runuser -u truce-pg --)
        chmod 755 "$work"
        mkdir "$work/pg"
        chown truce-pg: "$work/pg"
    else
        mkdir "$work/pg"
    fi
    pg_port=$(free_port)
    "${as_pg[@]}" initdb -U postgres -A trust -D "$work/pg/data" >/dev/null
    "${as_pg[@]}" pg_ctl -D "$work/pg/data" -l "$work/pg/log" -w \
        -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=256MB" \
        start >/dev/null
    trap 'stop_pg; cleanup' EXIT
    for db in "$@"; do psql_pg -d postgres -c "CREATE DATABASE $db"; done
}
stop_pg() { "${as_pg[@]}" pg_ctl -D "$work/pg/data" -m fast -w stop >/dev/null 2>&1 || true; }
psql_pg() { psql -h 127.0.0.1 -p "$pg_port" -U postgres -q -v ON_ERROR_STOP=1 "$@"; }
pg_url() { echo "postgres://postgres@127.0.0.1:$pg_port/$1"; }

# disk_bytes: bytes written so far to the block device holding $work (from
# /proc/diskstats: the whole device's, so measure with nothing else writing).
disk_bytes() {
    local device major minor name reads merged read_sectors read_ms writes wmerged sectors rest
    device=$(basename "$(df --output=source "$work" | tail -n 1)")
    while read -r major minor name reads merged read_sectors read_ms writes wmerged sectors rest; do
        if [ "$name" = "$device" ]; then
            echo $((sectors * 512))
        fi
    done < /proc/diskstats
}

# metric NAME: the value of an unlabelled metric of the server started last.
metric() {
    curl -s "http://$TRUCE_ADDR/metrics" | awk -v name="$1" '$1 == name { print $2 }'
}

# need_wrk: installs the wrk load generator with apt when it is missing.
need_wrk() {
    command -v wrk >/dev/null 2>&1 && return
    echo "installing wrk with apt" >&2
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
}
