#!/usr/bin/env bash
# MQTT benchmark of the ingestor, with Mosquitto as the yardstick in the same run (the same load generator,
# the same connections and window; Mosquitto without subscribers or persistence keeps messages in memory):
#  (a) QoS 1 messages/s of one reading, every PUBACK written only after the XADD holding the message
#  (b) Mosquitto's QoS 1 messages/s under the same load
#  (c) PUBACK latency p50/p99 at half of (a)'s rate, on both (from when each message was due)
#  (d) messages of 100 readings: readings/s through the ingestor
#  (e) the ingestor's RSS with BENCH_MQTT_IDLE idle connections (file descriptor limit raised for it), on the
#      ingestor loaded by (a)-(d) and on a fresh one
# Everything runs on free loopback ports and is stopped at the end.
# Knobs: BENCH_DURATION (s, 15), BENCH_MQTT_CONNECTIONS (100), BENCH_MQTT_INFLIGHT (64),
#        BENCH_MQTT_IDLE (10000), BENCH_MQTT_IDLE_SECONDS (10).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${BENCH_DURATION:-15}"
CONNS="${BENCH_MQTT_CONNECTIONS:-100}"
INFLIGHT="${BENCH_MQTT_INFLIGHT:-64}"
IDLE="${BENCH_MQTT_IDLE:-10000}"
IDLE_SECONDS="${BENCH_MQTT_IDLE_SECONDS:-10}"
TOKEN="vtd_mqtt_bench_$(date +%s)"
BIN="$ROOT/rust-ingestor/target/release/visiontrack-ingestor"
LOADGEN="$HERE/loadgen/target/release/vt-mqtt-loadgen"

for tool in redis-server redis-cli mosquitto curl python3 cargo; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || { echo "bench: $tool is not installed" >&2; exit 1; }
done
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

# shellcheck source=bench/ingestor/common.sh
source "$ROOT/bench/ingestor/common.sh"
WORK="$(mktemp -d /tmp/vt-mqtt-bench.XXXXXX)"
cleanup() { stop_started; rm -rf "$WORK"; }
trap cleanup EXIT
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Idle connections need a descriptor each, on both ends of the loopback.
ulimit -n "$(( IDLE * 2 + 4096 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "== building (release)"
(cd "$ROOT/rust-ingestor" && cargo build --release --locked --quiet)
(cd "$HERE/loadgen" && cargo build --release --locked --quiet)

REDIS_PORT="$(free_port)"; HTTP_PORT="$(free_port)"; MQTT_PORT="$(free_port)"; MOSQ_PORT="$(free_port)"
start_bench_redis "$REDIS_PORT" "$WORK/redis.log" "$TOKEN"
# No aggregator here: the high-water mark is raised and the stream deleted between runs (never outside a bench).
# Every connection is the same device, so its rate limit is off (BENCH_RATE_LIMIT sets VT_RATE_LIMIT).
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" VT_LISTEN_ADDR="127.0.0.1:$HTTP_PORT" \
  VT_MQTT_ADDR="127.0.0.1:$MQTT_PORT" VT_MQTT_RECEIVE_MAXIMUM="$INFLIGHT" \
  VT_STREAM_HIGH_WATER=1000000000 VT_RATE_LIMIT="${BENCH_RATE_LIMIT:-0}" VT_LOG_LEVEL=warn "$BIN" >"$WORK/ingestor.log" 2>&1 &
APP_PID=$!; PIDS+=("$APP_PID")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break; sleep 0.05; done

cat >"$WORK/mosquitto.conf" <<CONF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages $INFLIGHT
max_queued_messages 100000
CONF
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
MOSQ_PID=$!; PIDS+=("$MOSQ_PID")
sleep 0.5

# run PORT [loadgen options...] -> "acked rate p50_ms p99_ms"
run() {
  local port=$1
  shift
  "$LOADGEN" --addr "127.0.0.1:$port" --user "$TOKEN" --connections "$CONNS" --inflight "$INFLIGHT" \
    --duration "$DURATION" "$@" | tee -a "$WORK/loadgen.out" |
    sed -E 's/acked=([0-9]+) rate=([0-9]+).* p50_ms=([0-9.]+) p99_ms=([0-9.]+).*/\1 \2 \3 \4/'
}
reset_stream() { redis-cli -p "$REDIS_PORT" del vt:telemetry >/dev/null; }

echo "== warm-up (3 s)"
"$LOADGEN" --addr "127.0.0.1:$MQTT_PORT" --user "$TOKEN" --connections "$CONNS" --inflight "$INFLIGHT" --duration 3 >/dev/null
reset_stream

echo "== (a) ingestor, QoS 1, 1 reading, $CONNS connections, window $INFLIGHT, ${DURATION}s"
read -r A_ACKED A_RATE A_P50 A_P99 < <(run "$MQTT_PORT")
A_ENTRIES=$(redis-cli -p "$REDIS_PORT" xlen vt:telemetry)
A_STORED=$(stream_readings "$REDIS_PORT" vt:telemetry)
reset_stream

echo "== (b) mosquitto, QoS 1, same load"
read -r B_ACKED B_RATE B_P50 B_P99 < <(run "$MOSQ_PORT")

# Half of the lower of the two rates: one both can sustain.
HALF=$(( (A_RATE < B_RATE ? A_RATE : B_RATE) / 2 ))
echo "== (c) both at $HALF msg/s (half of the lower of (a) and (b)): PUBACK latency"
read -r _ C_RATE C_P50 C_P99 < <(run "$MQTT_PORT" --rate "$HALF")
reset_stream
read -r _ CM_RATE CM_P50 CM_P99 < <(run "$MOSQ_PORT" --rate "$HALF")

echo "== (d) ingestor, QoS 1, 100 readings a message"
read -r D_ACKED D_RATE _ _ < <(run "$MQTT_PORT" --readings 100)
D_STORED=$(stream_readings "$REDIS_PORT" vt:telemetry)
reset_stream

# idle_rss PID PORT -> "rss_before_kib rss_with_kib connections_held": IDLE connections held open on PORT.
idle_rss() {
  local pid=$1 port=$2 before ready with gen
  before=$(rss_kib "$pid")
  "$LOADGEN" --addr "127.0.0.1:$port" --user "$TOKEN" --idle "$IDLE" --duration "$IDLE_SECONDS" >"$WORK/idle.out" &
  gen=$!
  for _ in $(seq 600); do grep -q '^ready' "$WORK/idle.out" 2>/dev/null && break; sleep 0.1; done
  ready=$(awk '/^ready/ {print $2}' "$WORK/idle.out")
  sleep 1
  with=$(rss_kib "$pid")
  wait "$gen" || true
  echo "$before $with ${ready:-0}"
}

echo "== (e) ingestor RSS with $IDLE idle connections: the one loaded above, then a fresh one"
read -r E_BEFORE E_WITH E_READY < <(idle_rss "$APP_PID" "$MQTT_PORT")
FRESH_HTTP="$(free_port)"; FRESH_MQTT="$(free_port)"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" VT_LISTEN_ADDR="127.0.0.1:$FRESH_HTTP" VT_MQTT_ADDR="127.0.0.1:$FRESH_MQTT" \
  VT_RATE_LIMIT=0 VT_LOG_LEVEL=warn "$BIN" >"$WORK/ingestor-fresh.log" 2>&1 &
FRESH_PID=$!; PIDS+=("$FRESH_PID")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$FRESH_HTTP/readyz" >/dev/null && break; sleep 0.05; done
read -r F_BEFORE F_WITH F_READY < <(idle_rss "$FRESH_PID" "$FRESH_MQTT")

RATIO=$(awk -v a="$A_RATE" -v b="$B_RATE" 'BEGIN { if (b > 0) printf "%.0f", 100 * a / b; else print "n/a" }')
P99_RATIO=$(awk -v a="$C_P99" -v b="$CM_P99" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "n/a" }')
PER_CONN=$(awk -v a="$F_WITH" -v b="$F_BEFORE" -v n="$F_READY" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "n/a" }')
echo
echo "| measure | value |"
echo "| --- | --- |"
echo "| (a) ingestor QoS 1 msg/s of 1 reading (PUBACK after XADD), $CONNS conns, window $INFLIGHT | $A_RATE |"
echo "| (a) messages acknowledged by the deadline / readings in the stream (entries) | $A_ACKED / $A_STORED ($A_ENTRIES) |"
echo "| (b) mosquitto QoS 1 msg/s, same load | $B_RATE |"
echo "| (a) / (b) | ${RATIO}% |"
echo "| (c) PUBACK p50 / p99 at $HALF msg/s: ingestor | $C_P50 / $C_P99 ms ($C_RATE msg/s) |"
echo "| (c) PUBACK p50 / p99 at $HALF msg/s: mosquitto | $CM_P50 / $CM_P99 ms ($CM_RATE msg/s) |"
echo "| (c) p99 ingestor / mosquitto | ${P99_RATIO}x |"
echo "| (d) ingestor, 100 readings a message: msg/s, readings/s | $D_RATE, $(( D_RATE * 100 )) |"
echo "| (d) readings acknowledged by the deadline / in the stream | $(( D_ACKED * 100 )) / $D_STORED |"
echo "| (e) idle connections held: loaded ingestor, fresh one | $E_READY, $F_READY of $IDLE |"
echo "| (e) RSS of the ingestor loaded above, before / with them | $((E_BEFORE / 1024)) MiB / $((E_WITH / 1024)) MiB |"
echo "| (e) RSS of a fresh ingestor, before / with them | $((F_BEFORE / 1024)) MiB / $((F_WITH / 1024)) MiB ($PER_CONN KiB each) |"
echo "| CPUs | $(nproc) (loadgen, ingestor, Redis and mosquitto share them) |"
