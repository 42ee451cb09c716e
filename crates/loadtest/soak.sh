#!/usr/bin/env bash
# The soak of PERFORMANCE.md, reproducible: the seed mix at a steady load for a long time,
# watching the server's memory.
#
#   crates/loadtest/soak.sh sqlite      # or: postgres
#
# Starts `keel serve` on a fresh SQLite file (or a fresh PostgreSQL database on
# 127.0.0.1:5432) with the benchmark configuration (crates/loadtest/bench.toml), runs
# `keel-load mix` with USERS paced users (one request a second each) for DURATION, and
# samples the server's resident memory every SAMPLE seconds into rss.csv (VmRSS, split
# into RssAnon, the heap and stacks, and RssFile, mapped files such as SQLite's shared
# WAL index, the database file's size with its WAL, and the allocator's own account from
# /metrics: bytes Keel and SQLite hold, and bytes it keeps resident). Passes
# when the mix had no failure and the server's memory at the end is less than MAX_GROWTH %
# above its memory once warm (WARM seconds into the run: connections open, caches and
# SQLite's page cache filled), each the median of the samples over WINDOW seconds. The memory judged is MEASURE: `anon` (default), the heap and
# stacks, where a leak shows; or `rss`, all resident pages, which on SQLite include the
# database file mapped by `database.sqlite_mmap_mib` (OS page cache, growing with the file
# up to that size and reclaimed by the kernel at will, so it says nothing about leaks). Reports land in $SOAK_OUT (default /tmp/keel-soak/<engine>).
# Needs the release binaries: cargo build --release -p keel -p keel-loadtest
# Env: USERS (400), DURATION (30m), WARM (300), WINDOW (120), SAMPLE (10), MAX_GROWTH (10),
#      MEASURE (anon),
#      CARGO_TARGET_DIR, BENCH_PG (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/../.."

engine="${1:?usage: soak.sh sqlite|postgres}"
users="${USERS:-400}"
duration="${DURATION:-30m}"
warm="${WARM:-300}"
sample="${SAMPLE:-10}"
max_growth="${MAX_GROWTH:-10}"
window="${WINDOW:-120}"
measure="${MEASURE:-anon}"
target_dir="${CARGO_TARGET_DIR:-target}"
keel="$(realpath "$target_dir/release/keel")"
load="$(realpath "$target_dir/release/keel-load")"
config="$(realpath crates/loadtest/bench.toml)"
out="${SOAK_OUT:-/tmp/keel-soak/$engine}"

work="$(mktemp -d)"
mkdir -p "$out"
export KEEL_CONFIG="$config" KEEL_DATA_DIR="$work/data"
# The run outlives the default 15-minute access token.
export KEEL_AUTH__ACCESS_TOKEN_TTL_SECS=14400
db=""
case "$engine" in
  sqlite) ;;
  postgres)
    db="keel_soak_$$"
    pg="${BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
    psql "$pg/test" -qc "CREATE DATABASE $db"
    export KEEL_DATABASE_URL="$pg/$db"
    ;;
  *) echo "engine: sqlite or postgres" >&2; exit 2 ;;
esac

server="" sampler=""
cleanup() {
  [ -n "$sampler" ] && { kill "$sampler" 2>/dev/null || true; }
  [ -n "$server" ] && { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
  [ -n "$db" ] && psql "$pg/test" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
  cp "$work/serve.log" "$out/serve.log" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
host="http://127.0.0.1:$port"
KEEL_LISTEN="127.0.0.1:$port" "$keel" serve >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 120); do curl -sf "$host/health" >/dev/null && break; sleep 0.5; done
curl -sf "$host/health" >/dev/null || { echo "keel serve did not start" >&2; tail -40 "$work/serve.log" >&2; exit 1; }

memory_kib() { # VmRSS,RssAnon,RssFile
  awk '/^VmRSS/ {r=$2} /^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print r "," a "," f}' "/proc/$server/status"
}
db_kib() { # the SQLite file and its WAL (0 on PostgreSQL)
  du -ck "$work/data"/*.db "$work/data"/*.db-wal 2>/dev/null | awk 'END {print $1 + 0}'
}
heap_kib() { # the allocator's own account at /metrics: allocated (held by Keel and SQLite),resident
  curl -sf "$host/metrics" | awk '/^keel_allocator_bytes\{state="allocated"\}/ {a=$2}
    /^keel_allocator_bytes\{state="resident"\}/ {r=$2} END {printf "%d,%d", a / 1024, r / 1024}'
}
echo "seconds,rss_kib,anon_kib,file_kib,db_kib,heap_allocated_kib,heap_resident_kib" >"$out/rss.csv"
(
  start=$(date +%s)
  while kill -0 "$server" 2>/dev/null; do
    echo "$(( $(date +%s) - start )),$(memory_kib),$(db_kib),$(heap_kib)" >>"$out/rss.csv"
    sleep "$sample"
  done
) &
sampler=$!

status=0
"$load" --host "$host" --prepare --shipments 500 --report "$out/mix.json" --server-pid "$server" \
  mix --users "$users" --spawn-rate 100 --duration "$duration" --max-failure-rate 0 \
  --no-latency-criteria >"$out/mix.txt" 2>&1 || status=$?
cat "$out/mix.txt"
kill "$sampler" 2>/dev/null || true
sampler=""

if grep -q "panicked" "$work/serve.log"; then
  echo "keel serve panicked during the soak" >&2
  status=1
fi

# Memory once warm against memory at the end, each the median of the samples in a WINDOW
# of seconds (the first window starting WARM seconds in, the last one ending the run): a
# single sample moves by several MiB with the requests in flight at that instant.
python3 - "$out/rss.csv" "$warm" "$max_growth" "$measure" "$window" <<'EOF' || status=1
import csv, statistics, sys
column = {"anon": "anon_kib", "rss": "rss_kib"}[sys.argv[4]]
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["anon_kib"]]
warm_at, limit, window = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[5])
end_at = int(rows[-1]["seconds"])
def median(col, lo, hi):
    values = [int(r[col]) for r in rows if lo <= int(r["seconds"]) <= hi]
    return statistics.median(values) if values else int(rows[-1][col])
mib = lambda k: f"{k / 1024:.1f} MiB"
for label, col in [("RSS (all resident pages)", "rss_kib"), ("  anonymous (heap, stacks)", "anon_kib"),
                   ("  file-backed (binary, mapped database)", "file_kib"),
                   ("  allocator: held by Keel and SQLite", "heap_allocated_kib"),
                   ("  allocator: resident", "heap_resident_kib"),
                   ("database file + WAL on disk", "db_kib")]:
    print(f"{label}: first sample {mib(int(rows[0][col]))}, warm {mib(median(col, warm_at, warm_at + window))}, "
          f"peak {mib(max(int(r[col]) for r in rows))}, end {mib(median(col, end_at - window, end_at))}")
warm = median(column, warm_at, warm_at + window)
end = median(column, end_at - window, end_at)
growth = (end - warm) * 100.0 / warm
print(f"judged: {sys.argv[4]}, medians of {window} s windows (warm from {warm_at} s {mib(warm)}, end {mib(end)})")
print(f"growth after warm-up: {growth:+.1f} % (limit {limit:.0f} %)")
sys.exit(0 if growth < limit else 1)
EOF
exit "$status"
