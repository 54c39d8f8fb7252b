-- Sequential query latency (wrk -t1 -c1): random devices, metrics and windows over the loaded data.
-- Environment: QUERY_KIND (raw | day_1m | month_1h | latest), QUERY_START_MS, QUERY_END_MS, QUERY_TOKEN.
-- done() prints one JSON line the benchmark reads: percentiles in microseconds and the error counts.

local kind = os.getenv("QUERY_KIND")
local first_ms = tonumber(os.getenv("QUERY_START_MS"))
local last_ms = tonumber(os.getenv("QUERY_END_MS"))
local HOUR, DAY = 3600000, 86400000
local metrics = {"temperature", "humidity"}

wrk.headers["Authorization"] = "Bearer " .. os.getenv("QUERY_TOKEN")

local function series()
  return "device_id=" .. math.random(1, 1000) .. "&metric=" .. metrics[math.random(1, 2)]
end

local paths = {
  -- one hour of raw readings of one series
  raw = function()
    local from = math.random(first_ms, last_ms - HOUR)
    return "/api/telemetry/?" .. series() .. "&from=" .. from .. "&to=" .. (from + HOUR)
  end,
  -- 24 hours at 1m ending anywhere (ragged edges: raw rows for the partial minutes)
  day_1m = function()
    local to = math.random(first_ms + DAY, last_ms)
    return "/api/telemetry/aggregate?" .. series() .. "&interval=1m&from=" .. (to - DAY) .. "&to=" .. to
  end,
  -- 30 days at 1h ending within the last hour of data
  month_1h = function()
    local to = last_ms - math.random(0, HOUR)
    return "/api/telemetry/aggregate?" .. series() .. "&interval=1h&from=" .. (to - 30 * DAY) .. "&to=" .. to
  end,
  -- every metric of one device
  latest = function()
    return "/api/telemetry/latest?device_id=" .. math.random(1, 1000)
  end,
}
local make_path = assert(paths[kind], "QUERY_KIND must be one of raw, day_1m, month_1h, latest")

request = function()
  return wrk.format("GET", make_path())
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "errors": %d}\n',
    summary.requests, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout + e.status))
end
