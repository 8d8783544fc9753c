#!/usr/bin/env bash
# What one truce node asks of PostgreSQL, statement by statement: a throw-away
# cluster with pg_stat_statements preloaded, one node, 1 s of warm-up, then the
# counts reset and DURATION of one workload at 64 connections; prints the
# writes, the batches and each statement's calls and execution time.
#
#   scripts/pg-statements.sh [WORKLOAD]
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD=${1:-create}
DURATION=${DURATION:-5s}
source scripts/lib.sh
start_pg truce
psql_pg -d postgres -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
"${as_pg[@]}" pg_ctl -D "$work/pg/data" -m fast -w restart >/dev/null
psql_pg -d truce -c "CREATE EXTENSION pg_stat_statements"
start_serve node --database-url "$(pg_url truce)"
"$BIN" bench --url "http://$TRUCE_ADDR" --workload "$WORKLOAD" --connections 64 --duration 1s --json >/dev/null
psql_pg -d truce -c "SELECT pg_stat_statements_reset()" >/dev/null
"$BIN" bench --url "http://$TRUCE_ADDR" --workload "$WORKLOAD" --connections 64 --duration "$DURATION" --json |
    python3 -c 'import json, sys; d = json.loads(sys.stdin.readline()); print(d["ops"], "writes,", round(d["ops_per_second"]), "per second")'
psql_pg -d truce -c "SELECT calls, round(total_exec_time::numeric, 1) AS exec_ms, rows,
    left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS statement
    FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
    ORDER BY total_exec_time DESC LIMIT 15"
