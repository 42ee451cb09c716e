#!/usr/bin/env bash
# The closed-loop throughput figures of PERFORMANCE.md, reproducible:
#
#   crates/loadtest/bench.sh sqlite      # or: postgres
#
# Seeds the demo organization with 100,000 shipments in a fresh SQLite file (or a fresh
# PostgreSQL database on 127.0.0.1:5432), starts `keel serve` on it with the benchmark
# configuration (crates/loadtest/bench.toml: limits raised, still evaluated on every
# request), then runs `keel-load max` RUNS times (default 3) for each case:
#
#   list64   GET /api/v1/trade/shipments?page_size=20, authenticated, 64 connections
#   list256  the same, 256 connections
#   health   GET /health, 64 connections (sqlite only)
#   baseline GET /health of keel-baseline (a bare axum server), 64 connections (sqlite
#            only): what this machine and the load generator do at best, to read the
#            other figures against
#   search_rare    (not by default) a search for one sequence number (`q=0054321`: the
#                  trigram index's case), page of 20 with its total, 64 connections
#   search_common  (not by default) a search for a buyer in 1 row of 12 (`q=hamburg`:
#                  the organization's rows in order, total capped at 10,000), 64 connections
#
# and prints the median requests/s, p50 and p99 of the runs. Reports land in
# $BENCH_OUT (default /tmp/keel-bench/<engine>). Needs the release binaries:
#   cargo build --release -p keel -p keel-loadtest
# Env: RUNS, DURATION (30s), SHIPMENTS (100000), CASES ("list64 list256 health baseline"),
#      CARGO_TARGET_DIR, BENCH_PG (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/../.."

engine="${1:?usage: bench.sh sqlite|postgres}"
runs="${RUNS:-3}"
duration="${DURATION:-30s}"
shipments="${SHIPMENTS:-100000}"
target_dir="${CARGO_TARGET_DIR:-target}"
keel="$(realpath "$target_dir/release/keel")"
load="$(realpath "$target_dir/release/keel-load")"
baseline="$(realpath "$target_dir/release/keel-baseline")"
config="$(realpath crates/loadtest/bench.toml)"
out="${BENCH_OUT:-/tmp/keel-bench/$engine}"
password="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
email="admin@demo-exports.example.com"

work="$(mktemp -d)"
mkdir -p "$out"
export KEEL_CONFIG="$config" KEEL_DATA_DIR="$work/data"
# Long runs outlive the default 15-minute access token.
export KEEL_AUTH__ACCESS_TOKEN_TTL_SECS=7200
db=""
case "$engine" in
  sqlite) cases="${CASES:-list64 list256 health baseline}" ;;
  postgres)
    cases="${CASES:-list64 list256}"
    db="keel_bench_$$"
    pg="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
    psql "$pg/test" -qc "CREATE DATABASE $db"
    export KEEL_DATABASE_URL="$pg/$db"
    ;;
  *) echo "engine: sqlite or postgres" >&2; exit 2 ;;
esac

server="" bare=""
cleanup() {
  [ -n "$bare" ] && { kill "$bare" 2>/dev/null || true; wait "$bare" 2>/dev/null || true; }
  [ -n "$server" ] && { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
  [ -n "$db" ] && psql "$pg/test" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  cp "$work/serve.log" "$out/serve.log" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "seeding $shipments shipments ($engine)…"
"$keel" demo seed --shipments "$shipments" --password "$password" >"$out/seed.json"
jq -c '{seconds}' "$out/seed.json"

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
host="http://127.0.0.1:$port"
KEEL_LISTEN="127.0.0.1:$port" KEEL_LOG__LEVEL="${KEEL_LOG__LEVEL:-info}" \
  "$keel" serve >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 120); do curl -sf "$host/health" >/dev/null && break; sleep 0.5; done
curl -sf "$host/health" >/dev/null || { echo "keel serve did not start" >&2; tail -40 "$work/serve.log" >&2; exit 1; }

bare_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
case " $cases " in
  *" baseline "*)
    "$baseline" "127.0.0.1:$bare_port" 2>/dev/null &
    bare=$!
    for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$bare_port/health" >/dev/null && break; sleep 0.2; done
    ;;
esac

run_case() { # run_case <name> <run number>
  local name=$1 n=$2 args=() url=$host pid=$server
  case "$name" in
    list64) args=(--email "$email" --password "$password" max --auth -c 64
                  --path '/api/v1/trade/shipments?page_size=20') ;;
    list256) args=(--email "$email" --password "$password" max --auth -c 256
                   --path '/api/v1/trade/shipments?page_size=20') ;;
    search_rare) args=(--email "$email" --password "$password" max --auth -c 64
                       --path '/api/v1/trade/shipments?page_size=20&q=0054321') ;;
    search_common) args=(--email "$email" --password "$password" max --auth -c 64
                         --path '/api/v1/trade/shipments?page_size=20&q=hamburg') ;;
    health) args=(max -c 64 --path /health) ;;
    baseline) args=(max -c 64 --path /health); url="http://127.0.0.1:$bare_port"; pid=$bare ;;
    *) echo "unknown case $name" >&2; return 2 ;;
  esac
  "$load" --host "$url" --server-pid "$pid" --report "$out/$name-$n.json" \
    "${args[@]}" --duration "$duration" >"$out/$name-$n.txt" 2>&1 || {
      echo "$name run $n failed:" >&2; tail -30 "$out/$name-$n.txt" >&2; return 1; }
  jq -r --arg c "$name" --arg n "$n" \
    '.operations[-1] | "\($c) run \($n): \(.requests_per_sec|floor) req/s  p50 \(.p50_ms) ms  p99 \(.p99_ms) ms  failures \(.failures)"' \
    "$out/$name-$n.json"
}

for c in $cases; do
  for n in $(seq 1 "$runs"); do run_case "$c" "$n"; done
done

echo
echo "medians of $runs runs ($engine, $duration each):"
for c in $cases; do
  jq -rs --arg c "$c" '
    def median: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
    map(.operations[-1]) as $r
    | "\($c): \($r|map(.requests_per_sec)|median|floor) req/s, p50 \($r|map(.p50_ms)|median) ms, p99 \($r|map(.p99_ms)|median) ms, failures \($r|map(.failures)|add)"' \
    "$out/$c"-*.json
done
echo "server RSS: $(grep VmRSS "/proc/$server/status" | awk '{print $2, $3}')"
