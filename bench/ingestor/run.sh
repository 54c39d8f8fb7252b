#!/usr/bin/env bash
# Ingestor benchmark on this machine, with its yardsticks in the same run:
#  (a) single-reading requests/s and p99 (wrk, keep-alive)
#  (b) nginx answering a static 202 JSON on the same box, same wrk settings (the ratio)
#  (c) p99 at half of (a)'s rate, fixed-rate load from loadgen/ (wrk has no -R here)
#  (d) readings/s with 100 readings per request
#  (e) RSS idle and peak under load, from /proc
# and how often the same 0.5 ms of CPU work takes 3x its median here (bench/machine.py): a stall of the
# machine holds every request in flight, so it sets a floor under any p99.
# Everything runs on free loopback ports and is stopped at the end.
# Knobs: BENCH_DURATION (s, 15), BENCH_CONNECTIONS (64), BENCH_THREADS (wrk threads, 2),
#        BENCH_QUIET_WAIT (s, 120: wait at most this long for a mostly idle CPU before measuring),
#        BENCH_RATE_RUNS (3: fixed-rate runs for (c); the median p99 is reported).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${BENCH_DURATION:-15}"
CONNS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
QUIET_WAIT="${BENCH_QUIET_WAIT:-120}"
RATE_RUNS="${BENCH_RATE_RUNS:-3}"
TOKEN="vtd_bench_$(date +%s)"
BIN="$ROOT/rust-ingestor/target/release/visiontrack-ingestor"
LOADGEN="$HERE/loadgen/target/release/vt-loadgen"

for tool in redis-server redis-cli nginx wrk curl python3 cargo; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is not installed" >&2; exit 1; }
done

# shellcheck source=bench/ingestor/common.sh
source "$HERE/common.sh"
WORK="$(mktemp -d /tmp/vt-ingestor-bench.XXXXXX)"
cleanup() {
  stop_started
  rm -rf "$WORK"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
to_ms() { # wrk latency like 812.00us / 1.93ms / 1.02s -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n *= 1; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'
}
idle_pct() { # share of CPU time idle over one second, all cores
  read -r _ a b c d e f g h _ < /proc/stat; local t1=$((a+b+c+d+e+f+g+h)) i1=$d
  sleep 1
  read -r _ a b c d e f g h _ < /proc/stat; local t2=$((a+b+c+d+e+f+g+h)) i2=$d
  echo $(( 100 * (i2 - i1) / (t2 - t1) ))
}

echo "== building (release)"
(cd "$ROOT/rust-ingestor" && cargo build --release --locked --quiet)
(cd "$HERE/loadgen" && cargo build --release --locked --quiet)

REDIS_PORT="$(free_port)"; APP_PORT="$(free_port)"; NGINX_PORT="$(free_port)"
start_bench_redis "$REDIS_PORT" "$WORK/redis.log" "$TOKEN"

# One device sends everything, so its rate limit is off (BENCH_RATE_LIMIT sets VT_RATE_LIMIT).
# The bench has no aggregator: the high-water mark is raised and the stream is
# deleted between runs instead (never do that outside a bench).
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" VT_LISTEN_ADDR="127.0.0.1:$APP_PORT" \
  VT_STREAM_HIGH_WATER=1000000000 VT_RATE_LIMIT="${BENCH_RATE_LIMIT:-0}" VT_LOG_LEVEL=warn "$BIN" >"$WORK/ingestor.log" 2>&1 &
APP_PID=$!; PIDS+=("$APP_PID")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$APP_PORT/readyz" >/dev/null && break; sleep 0.05; done
curl -fs "http://127.0.0.1:$APP_PORT/readyz" >/dev/null || { echo "bench: ingestor not ready"; cat "$WORK/ingestor.log"; exit 1; }

cat >"$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { default_type application/json; return 202 '{"accepted":1}'; }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK" &
PIDS+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break; sleep 0.05; done

check=$(curl -s -XPOST -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" \
  -d '{"temperature":21.5}' "http://127.0.0.1:$APP_PORT/api/ingest")
[ "$check" = '{"accepted":1}' ] || { echo "bench: smoke request failed: $check"; exit 1; }

sleep 1
IDLE_RSS=$(rss_kib "$APP_PID")

# Other work on this machine (test suites, a running stack) skews every figure, tail latency most.
waited=0 quiet=0
while [ "$quiet" -lt 3 ] && [ "$waited" -lt "$QUIET_WAIT" ]; do
  BACKGROUND_IDLE=$(idle_pct); waited=$((waited + 1))
  if [ "$BACKGROUND_IDLE" -ge 85 ]; then quiet=$((quiet + 1)); else quiet=0; fi
  [ "$waited" -eq 1 ] && [ "$quiet" -eq 0 ] && echo "== waiting up to ${QUIET_WAIT}s for 3 s of mostly idle CPU (now ${BACKGROUND_IDLE}% idle)"
done
[ "$quiet" -ge 3 ] || echo "== the CPU did not get quiet: measuring anyway (see the idle figure below)"

reset_stream() { redis-cli -p "$REDIS_PORT" del vt:telemetry >/dev/null; }

# Samples the ingestor's RSS while a run is going; prints the largest value.
sample_rss() {
  local max=0 v
  while [ -e "$WORK/sampling" ]; do
    v=$(rss_kib "$APP_PID"); [ "$v" -gt "$max" ] && max=$v
    sleep 0.1
  done
  echo "$max"
}

run_wrk() { # url script -> prints "req_per_s p99_ms"
  VT_BENCH_TOKEN="$TOKEN" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$2" "$1" >"$WORK/wrk.out"
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.out")
  p99=$(awk '$1 == "99%" {print $2}' "$WORK/wrk.out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $NF}' "$WORK/wrk.out")
  [ -z "$non2xx" ] || echo "   (non-2xx responses: $non2xx)" >&2
  echo "$rps $(to_ms "$p99")"
}

echo "== warm-up (3 s)"
VT_BENCH_TOKEN="$TOKEN" wrk -t"$THREADS" -c"$CONNS" -d3s -s "$HERE/single.lua" "http://127.0.0.1:$APP_PORT/api/ingest" >/dev/null
reset_stream

touch "$WORK/sampling"; sample_rss >"$WORK/rss.max" &
SAMPLER=$!
echo "== (a) ingestor, 1 reading/request, ${DURATION}s, $CONNS connections, $THREADS wrk threads"
IDLE_A=$(idle_pct)
APP_T0=$(cpu_ticks "$APP_PID"); REDIS_T0=$(cpu_ticks "$REDIS_PID")
read -r A_RPS A_P99 < <(run_wrk "http://127.0.0.1:$APP_PORT/api/ingest" "$HERE/single.lua")
APP_T1=$(cpu_ticks "$APP_PID"); REDIS_T1=$(cpu_ticks "$REDIS_PID")
A_ENTRIES=$(redis-cli -p "$REDIS_PORT" xlen vt:telemetry)
A_REQUESTS=$(stream_readings "$REDIS_PORT" vt:telemetry)
TICK=$(getconf CLK_TCK)
# CPU time per request barely depends on what else runs on the machine, unlike the rates.
A_APP_US=$(awk -v t=$((APP_T1 - APP_T0)) -v n="$A_REQUESTS" -v hz="$TICK" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
A_REDIS_US=$(awk -v t=$((REDIS_T1 - REDIS_T0)) -v n="$A_REQUESTS" -v hz="$TICK" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
reset_stream

echo "== (b) nginx static 202, same settings"
read -r B_RPS B_P99 < <(run_wrk "http://127.0.0.1:$NGINX_PORT/api/ingest" "$HERE/single.lua")

HALF=$(awk -v r="$A_RPS" 'BEGIN { printf "%d", r / 2 }')
echo "== (c) ingestor at a fixed $HALF req/s (half of (a)), ${DURATION}s, $RATE_RUNS runs"
C_P99S=(); N_P99S=(); S_P99S=()
fixed_rate() { # port -> loadgen summary line
  "$LOADGEN" --addr "127.0.0.1:$1" --path /api/ingest --rate "$HALF" --duration "$DURATION" \
    --connections 64 --threads 1 --header 'Content-Type: application/json' \
    --header "Authorization: Bearer $TOKEN" --body '{"temperature":21.5}'
}
p99_of() { sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$1"; }
# The ingestor's own latency histogram for /api/ingest, as "le count" lines.
server_hist() {
  curl -s "http://127.0.0.1:$APP_PORT/metrics" \
    | sed -n 's/^visiontrack_ingestor_http_request_duration_seconds_bucket{route="\/api\/ingest",le="\([^"]*\)"} \([0-9]*\)$/\1 \2/p'
}
# Upper bucket bound (ms) under which 99% of the requests between two snapshots were served, server side.
server_p99() {
  awk 'NR == FNR { before[$1] = $2; next }
       { le[++n] = $1; d[n] = $2 - before[$1] }
       END { total = d[n]; for (i = 1; i <= n; i++) if (d[i] >= 0.99 * total) { print (le[i] == "+Inf" ? "inf" : le[i] * 1000); exit } }' "$1" "$2"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for _ in $(seq "$RATE_RUNS"); do
  server_hist >"$WORK/hist.before"
  C_OUT=$(fixed_rate "$APP_PORT"); echo "   ingestor: $C_OUT"
  server_hist >"$WORK/hist.after"
  S_P99S+=("$(server_p99 "$WORK/hist.before" "$WORK/hist.after")")
  C_P99S+=("$(p99_of "$C_OUT")")
  C_RATE=$(sed -n 's/.* rate=\([0-9]*\).*/\1/p' <<<"$C_OUT")
  reset_stream
  # The same fixed rate against nginx: how much of the tail is this machine's own.
  N_OUT=$(fixed_rate "$NGINX_PORT"); echo "   nginx:    $N_OUT"
  N_P99S+=("$(p99_of "$N_OUT")")
done
C_P99=$(median "${C_P99S[@]}")
N_P99=$(median "${N_P99S[@]}")
S_P99=$(median "${S_P99S[@]}")

echo "== (d) ingestor, 100 readings/request"
read -r D_RPS D_P99 < <(run_wrk "http://127.0.0.1:$APP_PORT/api/ingest" "$HERE/batch100.lua")
D_ENTRIES=$(redis-cli -p "$REDIS_PORT" xlen vt:telemetry)
reset_stream
rm -f "$WORK/sampling"; wait "$SAMPLER"
LOAD_RSS=$(cat "$WORK/rss.max")
HWM=$(hwm_kib "$APP_PID")

echo "== machine: the same 0.5 ms of CPU work timed again and again (bench/machine.py)"
IFS=$'\t' read -r SLOW_SHARE MACHINE < <(cd "$ROOT" && python3 -m bench.machine --tsv); echo "   $MACHINE"

D_READINGS=$(awk -v r="$D_RPS" 'BEGIN { printf "%d", r * 100 }')
RATIO=$(awk -v a="$A_RPS" -v b="$B_RPS" 'BEGIN { printf "%.0f", 100 * a / b }')
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? (v >= t) : (v < t); print ok ? "yes" : "NO" }'; }

echo
echo "Ingestor benchmark — $(nproc) cores, load generators on the same machine (wrk, keep-alive)."
echo "CPU idle just before (a): ${IDLE_A}% (other processes skew the figures when it is low)."
echo "Stream entries written: $A_ENTRIES for $A_REQUESTS requests in (a), $D_ENTRIES in (d) (requests that come together share an entry)."
echo "(c) p99 of each run: ingestor ${C_P99S[*]} ms (server side at most ${S_P99S[*]} ms), nginx ${N_P99S[*]} ms;"
echo "fixed-rate load from bench/ingestor/loadgen (open loop, 64 connections; wrk here has no -R)."
printf '| %-44s | %16s | %12s | %-4s |\n' "measure" "value" "target" "met"
printf '|%s|%s|%s|%s|\n' "----------------------------------------------" "------------------" "--------------" "------"
printf '| %-44s | %16s | %12s | %-4s |\n' "(a) single reading, requests/s" "$A_RPS" ">= 30000" "$(verdict "$A_RPS" 30000 '>=')"
printf '| %-44s | %16s | %12s | %-4s |\n' "(a) single reading, p99 at max rate (ms)" "$A_P99" "-" "-"
printf '| %-44s | %16s | %12s | %-4s |\n' "(a) CPU per request: ingestor / redis (us)" "$A_APP_US / $A_REDIS_US" "-" "-"
printf '| %-44s | %16s | %12s | %-4s |\n' "(b) nginx static 202, requests/s" "$B_RPS" "-" "-"
printf '| %-44s | %15s%% | %12s | %-4s |\n' "(b) ingestor / nginx" "$RATIO" ">= 45%" "$(verdict "$RATIO" 45 '>=')"
printf '| %-44s | %16s | %12s | %-4s |\n' "(c) p99 at $C_RATE req/s, median run (ms)" "$C_P99" "< 5" "$(verdict "$C_P99" 5 '<')"
printf '| %-44s | %16s | %12s | %-4s |\n' "(c) same, server side (histogram bucket, ms)" "<= $S_P99" "-" "-"
printf '| %-44s | %16s | %12s | %-4s |\n' "(c) nginx static at the same rate, p99 (ms)" "$N_P99" "-" "-"
printf '| %-44s | %16s | %12s | %-4s |\n' "(c) machine: 0.5 ms CPU units taking >= 3x" "$SLOW_SHARE" "-" "-"
printf '| %-44s | %16s | %12s | %-4s |\n' "(d) 100 readings/request, readings/s" "$D_READINGS" ">= 300000" "$(verdict "$D_READINGS" 300000 '>=')"
printf '| %-44s | %16s | %12s | %-4s |\n' "(d) requests/s (p99 ms)" "$D_RPS ($D_P99)" "-" "-"
printf '| %-44s | %16s | %12s | %-4s |\n' "(e) RSS idle (MiB)" "$(mib "$IDLE_RSS")" "< 20" "$(verdict "$(mib "$IDLE_RSS")" 20 '<')"
printf '| %-44s | %16s | %12s | %-4s |\n' "(e) RSS under load, max sampled (MiB)" "$(mib "$LOAD_RSS")" "< 60" "$(verdict "$(mib "$LOAD_RSS")" 60 '<')"
printf '| %-44s | %16s | %12s | %-4s |\n' "(e) RSS peak over the whole run, VmHWM (MiB)" "$(mib "$HWM")" "< 60" "$(verdict "$(mib "$HWM")" 60 '<')"
