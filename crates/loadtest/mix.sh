#!/usr/bin/env bash
# The seed 001 mix figures of PERFORMANCE.md, reproducible:
#
#   crates/loadtest/mix.sh sqlite      # or: postgres
#
# RUNS times (default 3): a fresh `keel serve` on a fresh SQLite file (or a fresh
# PostgreSQL database on 127.0.0.1:5432) with the benchmark configuration
# (crates/loadtest/bench.toml), then `keel-load --prepare --shipments 500 mix` with USERS
# paced users (100 started a second, one request a second each) for DURATION. Prints each
# run's total row and the medians of the runs; the per-operation tables and JSON reports
# land in $MIX_OUT (default /tmp/keel-mix/<engine>). Exits 1 if any run failed a request.
# Needs the release binaries: cargo build --release -p keel -p keel-loadtest
# Env: RUNS (3), USERS (1000), DURATION (60s), CARGO_TARGET_DIR,
#      BENCH_PG (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/../.."

engine="${1:?usage: mix.sh sqlite|postgres}"
runs="${RUNS:-3}"
users="${USERS:-1000}"
duration="${DURATION:-60s}"
target_dir="${CARGO_TARGET_DIR:-target}"
keel="$(realpath "$target_dir/release/keel")"
load="$(realpath "$target_dir/release/keel-load")"
config="$(realpath crates/loadtest/bench.toml)"
out="${MIX_OUT:-/tmp/keel-mix/$engine}"
pg="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
mkdir -p "$out"
rm -f "$out"/run-*.json

server="" work="" db=""
stop() {
  [ -n "$server" ] && { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
  [ -n "$db" ] && psql "$pg/test" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  [ -n "$work" ] && rm -rf "$work"
  server="" work="" db=""
}
trap stop EXIT

status=0
for n in $(seq 1 "$runs"); do
  work="$(mktemp -d)"
  unset KEEL_DATABASE_URL
  case "$engine" in
    sqlite) ;;
    postgres)
      db="keel_mix_$$_$n"
      psql "$pg/test" -qc "CREATE DATABASE $db"
      export KEEL_DATABASE_URL="$pg/$db"
      ;;
    *) echo "engine: sqlite or postgres" >&2; exit 2 ;;
  esac
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  host="http://127.0.0.1:$port"
  KEEL_CONFIG="$config" KEEL_DATA_DIR="$work/data" KEEL_LISTEN="127.0.0.1:$port" \
    "$keel" serve >"$work/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 120); do curl -sf "$host/health" >/dev/null && break; sleep 0.5; done
  "$load" --host "$host" --prepare --shipments 500 --server-pid "$server" \
    --report "$out/run-$n.json" mix --users "$users" --spawn-rate 100 --duration "$duration" \
    >"$out/run-$n.txt" 2>&1 || true
  jq -r --arg n "$n" '.operations[-1] | "run \($n): \(.requests) requests (\(.requests_per_sec|floor)/s), failures \(.failures), p50 \(.p50_ms) ms, p95 \(.p95_ms) ms, p99 \(.p99_ms) ms"' \
    "$out/run-$n.json"
  [ "$(jq '.operations[-1].failures' "$out/run-$n.json")" = 0 ] || status=1
  grep -q panicked "$work/serve.log" && { echo "run $n: keel serve panicked" >&2; status=1; }
  cp "$work/serve.log" "$out/serve-$n.log"
  stop
done

echo
echo "medians of $runs runs ($engine, $users users, $duration each):"
jq -rs '
  def median: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
  map(.operations[-1]) as $r
  | "\($r|map(.requests_per_sec)|median|floor) requests/s, p50 \($r|map(.p50_ms)|median) ms, p95 \($r|map(.p95_ms)|median) ms, p99 \($r|map(.p99_ms)|median) ms, failures \($r|map(.failures)|add)"' \
  "$out"/run-*.json
exit "$status"
