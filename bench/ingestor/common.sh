# Shared by the ingestor benchmarks (sourced): free ports, CPU ticks of a process, the processes started
# (stopped at exit), and a throwaway Redis holding one active device token.

PIDS=()
stop_started() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }   # utime + stime, in clock ticks

# start_bench_redis <port> <logfile> <token>: no persistence, noeviction; sets REDIS_PID; the token is
# indexed for device 1 as the registry would (sha256 hex -> "1:active").
start_bench_redis() {
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --maxmemory-policy noeviction \
    --logfile "$2" &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && break; sleep 0.05; done
  redis-cli -p "$1" hset vt:device-tokens "$(printf '%s' "$3" | sha256sum | cut -d' ' -f1)" "1:active" >/dev/null
}

# stream_readings <port> <key>: the readings the stream's entries hold, in both entry formats
# (docs/contracts.md, section 1). XLEN counts entries, and an entry holds many requests (or MQTT messages)
# when they come together.
stream_readings() {
  redis-cli -p "$1" --no-raw eval "
    local n, start = 0, '-'
    while true do
      local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 10000)
      for _, entry in ipairs(page) do
        local fields = entry[2]
        for i = 1, #fields, 2 do
          if fields[i] == 'r' then n = n + #cjson.decode(fields[i + 1]) end
          if fields[i] == 'g' then
            for _, part in ipairs(cjson.decode(fields[i + 1])) do n = n + #part[3] end
          end
        end
      end
      if #page < 10000 then return n end
      start = '(' .. page[#page][1]
    end" 1 "$2" | sed 's/^(integer) //'
}
