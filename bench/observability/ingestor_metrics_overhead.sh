#!/usr/bin/env bash
# What the ingestor's metrics cost: the same source built twice, once as it is and once with every metric
# recording call (src/metrics.rs: request, accepted, rejected, backpressure, redis_error, token_cache,
# stream_backlog) turned into a no-op, both outside the repository (the ingestor has no switch for it).
# Then single-reading requests at full speed (wrk, keep-alive) against each, alternating, while /metrics is
# scraped every second on the "with" build; reports requests/s and CPU time per request, medians of the
# runs, and the difference. On a shared or busy machine those swing by more than the metrics cost, so it
# also counts the instructions per request of each build under valgrind's callgrind (deterministic to a
# few hundred instructions): (instructions after N sequential requests - after none) / N.
# Knobs: OVERHEAD_IR_REQUESTS (20000; 0 skips callgrind; each build counted twice), OVERHEAD_RUNS (3 per build), OVERHEAD_DURATION (s, 10), OVERHEAD_CONNECTIONS (64),
#        OVERHEAD_WORK (/tmp/vt-metrics-overhead), OVERHEAD_REBUILD (1; 0 reuses the two binaries there).
# What is still measured in both: the per-request Instant::now() of the metrics middleware.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
RUNS="${OVERHEAD_RUNS:-3}"
DURATION="${OVERHEAD_DURATION:-10}"
CONNS="${OVERHEAD_CONNECTIONS:-64}"
WORK="${OVERHEAD_WORK:-/tmp/vt-metrics-overhead}"
TOKEN="vtd_overhead_bench"
for tool in cargo redis-server redis-cli wrk curl python3 valgrind; do
  command -v "$tool" >/dev/null || { echo "overhead: $tool is not installed" >&2; exit 1; }
done

mkdir -p "$WORK"
if [ "${OVERHEAD_REBUILD:-1}" != 0 ] || [ ! -x "$WORK/ingestor-with" ] || [ ! -x "$WORK/ingestor-without" ]; then
for v in with without; do
  rm -rf "$WORK/$v"; mkdir -p "$WORK/$v"
  cp -r "$ROOT/rust-ingestor/src" "$ROOT/rust-ingestor/Cargo.toml" "$ROOT/rust-ingestor/Cargo.lock" "$WORK/$v/"
done
python3 - "$WORK/without/src/metrics.rs" <<'PY'
import re, sys
path = sys.argv[1]
src = open(path).read()
for m in list(re.finditer(r"^pub fn (request|accepted|rejected|backpressure|redis_error|token_cache|stream_backlog)\((.*?)\) \{\n", src, re.M))[::-1]:
    end = src.index("\n}\n", m.end())
    args = [a.split(":")[0].strip() for a in m.group(2).split(",") if a.strip()]
    src = src[:m.end()] + f"    let _ = ({', '.join(args)}{',' if len(args) == 1 else ''});\n" + src[end + 1:]
open(path, "w").write(src)
PY
echo "== building both (release, shared target dir $WORK/target)"
for v in with without; do
  (cd "$WORK/$v" && CARGO_TARGET_DIR="$WORK/target" cargo build --release --quiet 2>/dev/null)
  cp "$WORK/target/release/visiontrack-ingestor" "$WORK/ingestor-$v"
done
fi

# shellcheck source=bench/ingestor/common.sh
source "$ROOT/bench/ingestor/common.sh"
trap stop_started EXIT

REDIS_PORT="$(free_port)"
start_bench_redis "$REDIS_PORT" "$WORK/redis.log" "$TOKEN"

run() { # build -> "req/s cpu_us_per_request"
  local v=$1 port pid scraper="" t0 t1 rps
  port="$(free_port)"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" VT_LISTEN_ADDR="127.0.0.1:$port" VT_STREAM_HIGH_WATER=1000000000 \
    VT_LOG_LEVEL=warn "$WORK/ingestor-$v" >>"$WORK/ingestor-$v.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
  VT_BENCH_TOKEN="$TOKEN" wrk -t2 -c"$CONNS" -d2s -s "$ROOT/bench/ingestor/single.lua" "http://127.0.0.1:$port/api/ingest" >/dev/null
  if [ "$v" = with ]; then
    (while sleep 1; do curl -fs "http://127.0.0.1:$port/metrics" >/dev/null || true; done) &
    scraper=$!
  fi
  t0=$(cpu_ticks "$pid")
  rps=$(VT_BENCH_TOKEN="$TOKEN" wrk -t2 -c"$CONNS" -d"${DURATION}s" -s "$ROOT/bench/ingestor/single.lua" \
        "http://127.0.0.1:$port/api/ingest" | awk '/^Requests\/sec:/ {print $2}')
  t1=$(cpu_ticks "$pid")
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
  redis-cli -p "$REDIS_PORT" del vt:telemetry >/dev/null
  python3 -c "import sys; r=float('$rps'); print(f'{r:.0f}', f'{($t1-$t0)/$(getconf CLK_TCK)*1e6/(r*$DURATION):.1f}')"
}

declare -A RPS CPU IR
for i in $(seq "$RUNS"); do
  for v in with without; do
    read -r r c < <(run "$v")
    RPS[$v]+="$r "; CPU[$v]+="$c "
    echo "   run $i, metrics $v: $r req/s, $c us CPU/request"
  done
done
python3 - "${RPS[with]}" "${RPS[without]}" "${CPU[with]}" "${CPU[without]}" <<'PY'
import statistics, sys
rw, ro, cw, co = ([float(x) for x in a.split()] for a in sys.argv[1:])
mrw, mro, mcw, mco = map(statistics.median, (rw, ro, cw, co))
print("\n| ingestor build | req/s (median) | CPU per request (median) |")
print("| --- | --- | --- |")
print(f"| metrics on (as shipped), scraped every 1 s | {mrw:.0f} | {mcw:.1f} us |")
print(f"| metrics recording off | {mro:.0f} | {mco:.1f} us |")
print(f"\nthroughput cost of metrics: {100 * (mro - mrw) / mro:+.1f}%; CPU per request: {100 * (mcw - mco) / mco:+.1f}%")
PY

IR_REQUESTS="${OVERHEAD_IR_REQUESTS:-20000}"
[ "$IR_REQUESTS" -gt 0 ] || exit 0
instructions() { # build requests -> instructions executed by the ingestor, start to exit
  local v=$1 n=$2 port out="$WORK/callgrind-$1-$2.out" pid
  port="$(free_port)"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" VT_LISTEN_ADDR="127.0.0.1:$port" VT_STREAM_HIGH_WATER=1000000000 \
    VT_LOG_LEVEL=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$WORK/ingestor-$v" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  python3 - "$port" "$n" "$TOKEN" <<'PY'
import http.client, sys
port, n, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("POST", "/api/ingest", body=b'{"temperature":21.5}',
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 202, resp.status
PY
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"
  redis-cli -p "$REDIS_PORT" del vt:telemetry >/dev/null
}
echo
echo "== instructions per request under callgrind ($IR_REQUESTS sequential requests, one connection)"
for v in with without; do
  base=$(instructions "$v" 0)
  first=$(( ($(instructions "$v" "$IR_REQUESTS") - base) / IR_REQUESTS ))
  second=$(( ($(instructions "$v" "$IR_REQUESTS") - base) / IR_REQUESTS ))
  IR[$v]=$(( (first + second) / 2 ))
  echo "   metrics $v: ${IR[$v]} instructions/request (runs: $first, $second)"
done
python3 -c "w, o = ${IR[with]}, ${IR[without]}; print(f'instructions per request spent on metrics: {w - o} ({100 * (w - o) / o:+.1f}%; the two runs of a build differ by a few hundred)')"
