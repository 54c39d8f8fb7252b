#!/usr/bin/env bash
# What the per-device rate limit costs the ingestor: two ingestors on the same Redis, one with the limit
# off (VT_RATE_LIMIT=0), one with it on but too high to refuse anything (every request takes its tokens),
# measured in alternating wrk runs of single-reading requests (keep-alive, one device: every request
# goes through the same bucket, the worst case for its lock). Reports the median requests/s of each and
# the ingestor's CPU time per request, which depends less on what else runs on the machine.
# Knobs: BENCH_DURATION (s, 8), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32), BENCH_THREADS (2).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${BENCH_DURATION:-8}"
ROUNDS="${BENCH_ROUNDS:-3}"
CONNS="${BENCH_CONNECTIONS:-32}"
THREADS="${BENCH_THREADS:-2}"
TOKEN="vtd_bench_$(date +%s)"
BIN="$ROOT/rust-ingestor/target/release/visiontrack-ingestor"

# shellcheck source=bench/ingestor/common.sh
source "$HERE/common.sh"
WORK="$(mktemp -d /tmp/vt-ratelimit-bench.XXXXXX)"
trap 'stop_started; rm -rf "$WORK"' EXIT

REDIS_PORT="$(free_port)"
start_bench_redis "$REDIS_PORT" "$WORK/redis.log" "$TOKEN"
declare -A PORT PID
for mode in off on; do
  PORT[$mode]="$(free_port)"
  limit=0; [ "$mode" = on ] && limit=1000000000
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" VT_LISTEN_ADDR="127.0.0.1:${PORT[$mode]}" VT_WORKER_THREADS=2 \
    VT_STREAM_HIGH_WATER=1000000000 VT_RATE_LIMIT="$limit" VT_RATE_LIMIT_BURST=1000000000 VT_LOG_LEVEL=warn \
    "$BIN" >"$WORK/ingestor-$mode.log" 2>&1 &
  PID[$mode]=$!; PIDS+=("${PID[$mode]}")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:${PORT[$mode]}/readyz" >/dev/null && break; sleep 0.05; done
done

run() { # mode -> "req_per_s cpu_us_per_request"
  local t0 t1 rps n
  redis-cli -p "$REDIS_PORT" del vt:telemetry >/dev/null
  t0=$(cpu_ticks "${PID[$1]}")
  VT_BENCH_TOKEN="$TOKEN" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" -s "$HERE/single.lua" \
    "http://127.0.0.1:${PORT[$1]}/api/ingest" >"$WORK/wrk.out"
  t1=$(cpu_ticks "${PID[$1]}")
  grep -q Non-2xx "$WORK/wrk.out" && { echo "bench: non-2xx answers with the limit $1" >&2; cat "$WORK/wrk.out" >&2; }
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.out")
  n=$(stream_readings "$REDIS_PORT" vt:telemetry)
  awk -v r="$rps" -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f %.1f\n", r, t * 1e6 / hz / n }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A RPS CPU
for mode in off on; do run "$mode" >/dev/null; done   # warm-up
for i in $(seq "$ROUNDS"); do
  # Which goes first alternates, so neither always runs on a machine warmed (or disturbed) by the other.
  order="off on"; [ $((i % 2)) -eq 0 ] && order="on off"
  for mode in $order; do
    read -r r c < <(run "$mode")
    echo "round $i, limit $mode: $r req/s, $c us CPU/request"
    RPS[$mode]+="$r "; CPU[$mode]+="$c "
  done
done
# shellcheck disable=SC2086
off_r=$(median ${RPS[off]}); on_r=$(median ${RPS[on]}); off_c=$(median ${CPU[off]}); on_c=$(median ${CPU[on]})
echo "median: limit off $off_r req/s ($off_c us CPU/request), limit on $on_r req/s ($on_c us CPU/request);" \
  "on/off $(awk -v a="$on_r" -v b="$off_r" 'BEGIN { printf "%.1f%%", 100 * a / b }')"
